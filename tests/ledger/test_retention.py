"""Retention's decisions (ledger/retention.py) on ledgers folded from real events: what stays,
what goes, and that nothing a resume or a lagging reader may still need goes (docs/worker.md)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shardrun import paths
from shardrun.ledger.retention import RetentionRule, best_checkpoint, decide, kept_checkpoints, run_view
from shardrun.storage.base import Stat
from tests.ledger.test_db import ev, fold, plan_event

LEASE = 100.0  # the horizon: one lease of store time
RULE = RetentionRule(keep_last=3, fallbacks=2, horizon_leases=1.0)


def key(step, chunk=0, generation=0, worker="w1"):
    return paths.checkpoint_key("j", "r1", chunk, generation, worker, step)


def pictures(step, chunk=0, generation=0, worker="w1"):
    return paths.validation_pictures_key("j", "r1", chunk, generation, worker, step)


def checkpoint(time, step, chunk=0, generation=0, worker="w1", psnr=None):
    payload = {"step": step, "key": key(step, chunk, generation, worker), "md5": "m"}
    if psnr is not None:
        payload["validation"] = {"psnr": psnr, "ssim": 0.9, "bicubic_psnr": 20.0, "bicubic_ssim": 0.8,
                                 "pictures": {"key": pictures(step, chunk, generation, worker), "md5": "p"}}
    return ev("checkpoint", time, worker=worker, chunk=chunk, generation=generation, **payload)


def listing(*keys_and_times) -> list[Stat]:
    return [Stat(k, 10, t) for k, t in keys_and_times]


def judged(events, listed, now):
    ledger = fold(events)
    return decide(run_view(ledger, "r1"), listed, now, RULE)


def ten_checkpoints():
    """w1 owns chunk 0 (steps 0-100) and checkpoints at steps 10, 20, ... 90, at times 10, 20, ... 90."""
    return [plan_event(lease=LEASE), ev("claim", 1)] + [checkpoint(t, t) for t in range(10, 100, 10)]


def test_a_superseded_checkpoint_goes_only_once_two_newer_ones_are_settled():
    events = ten_checkpoints()
    listed = listing(*[(key(s), s) for s in range(10, 100, 10)])
    # Nothing is a lease old yet: a reader that lags may resume from any of them.
    early = judged(events, listed, now=95)
    assert early.delete == [] and early.later == [] and len(early.keep) == 9
    # At 150 the checkpoints of steps 10-50 are settled: 60-90 stay (not yet superseded for good),
    # 50 and 40 are the two settled ones every reader has seen, older ones go.
    middle = judged(events, listed, now=150)
    assert sorted(middle.delete) == [key(10), key(20), key(30)]
    assert middle.keep[key(40)] == middle.keep[key(50)] == "not yet superseded for good"
    # Long after: the newest three (for a user) and the chunk's resume point and fallback stay.
    late = judged(events, listed, now=10_000)
    assert set(late.keep) == {key(90), key(80), key(70)}
    assert late.keep[key(90)] == "latest of chunk 0" and late.keep[key(80)] == "resume point of chunk 0"
    assert sorted(late.delete) == sorted(key(s) for s in range(10, 70, 10))


def test_the_best_by_validation_and_every_chunks_final_stay_with_their_pictures():
    events = [plan_event(lease=LEASE), ev("claim", 1), checkpoint(10, 10, psnr=30.0), checkpoint(20, 20, psnr=33.0),
              checkpoint(30, 30, psnr=31.0), ev("done", 40, step=100, key=key(100), md5="m"),
              ev("claim", 41, chunk=1, worker="w2")]
    events += [checkpoint(50 + i, 100 + 10 * i, chunk=1, worker="w2", psnr=32.0) for i in range(1, 7)]
    ledger = fold(events)
    view = run_view(ledger, "r1")
    assert best_checkpoint(view.accepted, view.scores)["key"] == key(20)
    listed = listing(*[(cp["key"], cp["server_time"]) for cp in view.accepted],
                     (pictures(20), 20), (pictures(30), 30), (pictures(160, 1, 0, "w2"), 56))
    verdict = decide(view, listed, 10_000, RULE)
    assert verdict.keep[key(20)] == "best validation" and verdict.keep[pictures(20)] == "best validation (its pictures)"
    assert verdict.keep[key(100)] == "final of chunk 0"
    # The latest validation's pictures are what status shows: they stay with their checkpoint.
    assert pictures(160, 1, 0, "w2") in verdict.keep
    assert key(30) in verdict.delete and pictures(30) in verdict.delete and key(10) in verdict.delete
    # `export --checkpoint best` makes the same choice (product/ uses best_checkpoint).
    from shardrun.product.checkpoints import candidates

    assert candidates(ledger, "r1", "best")[0][0]["key"] == key(20)


def test_a_yielded_chunk_keeps_its_resume_point_and_the_one_it_falls_back_to():
    events = ten_checkpoints() + [ev("yield", 95, step=90, key=key(90), md5="m"), ev("claim", 96, generation=1,
                                                                                      worker="w2")]
    # w2 resumes at 90 and writes 91-99 while the listing still holds everything.
    events += [checkpoint(100 + i, 90 + i, generation=1, worker="w2") for i in range(1, 10)]
    ledger = fold(events)
    kept = kept_checkpoints(run_view(ledger, "r1"), 10_000, RULE)
    assert {key(99, 0, 1, "w2"), key(98, 0, 1, "w2")} <= set(kept)
    # Before w2's checkpoints are settled, a reader that has not seen them resumes from 90 (the
    # yield's) and falls back to 80: both stay.
    kept_soon = kept_checkpoints(run_view(ledger, "r1"), 150, RULE)
    assert {key(90), key(80)} <= set(kept_soon)


def test_an_upload_without_its_event_stays_while_its_writer_owns_the_chunk():
    orphan = key(95)  # uploaded at 95; its writer died before the `checkpoint` event
    events = ten_checkpoints()
    listed = listing((orphan, 95))
    assert judged(events, listed, now=10_000).later == [orphan]  # w1 still owns chunk 0: it may write the event
    # The lease expires at 200 (w1 silent since 90): the attempt is over, but only once the
    # expiry is settled (a lease later) is it over for every reader.
    events += [ev("expire", 200, worker="w9")]
    assert judged(events, listed, now=250).later == [orphan]
    assert judged(events, listed, now=300).delete == [orphan]


def test_a_fenced_workers_uploads_go_once_they_and_the_winners_claim_are_settled():
    events = ten_checkpoints() + [ev("claim", 5, worker="w2")]  # w2 lost the claim to w1's earlier one
    events += [checkpoint(15, 11, worker="w2"), checkpoint(25, 12, worker="w2")]  # fenced: not accepted
    listed = listing((key(11, worker="w2"), 15), (key(12, worker="w2"), 25), (pictures(12, worker="w2"), 25))
    assert sorted(judged(events, listed, now=110).later) == sorted(k.key for k in listed)  # not yet settled
    assert sorted(judged(events, listed, now=120).later) == [key(12, worker="w2"), pictures(12, worker="w2")]
    assert judged(events, listed, now=120).delete == [key(11, worker="w2")]
    assert len(judged(events, listed, now=125).delete) == 3


def test_objects_of_other_shapes_or_runs_are_left_alone_and_a_recent_plan_deletes_no_orphan():
    events = ten_checkpoints()
    foreign = listing(("j/checkpoints/r1/notes.txt", 0), (paths.checkpoint_key("j", "r2", 0, 0, "w1", 5), 0))
    verdict = judged(events, foreign, now=10_000)
    assert verdict.keep == {} and verdict.delete == [] and verdict.later == []
    # A replanned run starts over: its old checkpoints are no longer accepted. They go only once
    # the new plan is settled (a reader still on the old plan may resume from them meanwhile).
    replanned = events + [plan_event("plan-2", time=9_990, replaces="plan-1", lease=LEASE)]
    old = listing((key(90), 90))
    assert judged(replanned, old, now=10_000).later == [key(90)]
    assert judged(replanned, old, now=10_100).delete == [key(90)]


# -- readers that lag: a property ----------------------------------------------------------------

MAX_LAG = 0.9 * LEASE  # the premise of the safety argument: listings lag less than the horizon


def simulate(seed: int) -> tuple[list, dict[str, float]]:
    """Returns a random history of chunk 0-2 of run r1 (STEPS steps each): the events, in store time,
    and every checkpoint object uploaded (key -> its store time). Owners checkpoint, heartbeat,
    yield, finish or die (sometimes right after an upload, before its event); a loser of a claim
    writes what the fold fences off; any worker may try to expire a lease, early or not. What is
    accepted is what the real fold of the events so far says. A writer may also stall (a laptop
    asleep) between an upload and its event, which then lands minutes later."""
    rng = random.Random(seed)
    events, objects = [plan_event(lease=LEASE)], {}
    truth = fold(events)
    t, fresh = 1.0, iter(range(100, 10**6))
    alive = ["w1", "w2", "w3"]
    progress: dict[str, int] = {}  # a worker's step in the chunk it trains
    stalled: dict[str, tuple[float, object]] = {}  # worker -> (when its event lands, the event)

    def add(event):
        events.append(event)
        truth.add_events([event])

    while t < 4000 and any(c["state"] != "done" for c in truth.chunks("r1")):
        t += rng.uniform(1.0, 45.0)
        for worker, (due, event) in list(stalled.items()):
            if due <= t:
                add(event)
                del stalled[worker]
        chunks = truth.chunks("r1")
        ready = [c for c in chunks if c["state"] == "ready"]
        running = [c for c in chunks if c["state"] == "running"]
        roll = rng.random()
        if ready and roll < 0.5:
            c = ready[0]
            for claimer in rng.sample(alive, rng.choice([1, 1, 2])):  # now and then two claim at once
                add(ev("claim", t + rng.uniform(0, 5), worker=claimer, chunk=c["idx"], generation=c["generation"]))
                progress[claimer] = max(c["step_reached"], c["start_step"])
            t += 5
            continue
        if not running:
            continue
        c = running[0]
        owner, idx, gen = c["owner"], c["idx"], c["generation"]
        writer = owner if owner in alive and owner not in stalled else None
        if rng.random() < 0.15:  # a loser that believes it owns the chunk writes all the same
            writer = rng.choice([w for w in alive if w not in stalled] or [None])
            progress.setdefault(writer, c["step_reached"])
        if writer is None or roll > 0.93:
            if writer is None and rng.random() < 0.7:
                continue  # no other worker is about to free the chunk of a silent owner
            add(ev("expire", t, worker=rng.choice(alive), chunk=idx, generation=gen))
            continue
        step = min(c["end_step"], progress.get(writer, c["step_reached"]) + rng.randint(1, 12))
        progress[writer] = step
        k = key(step, idx, gen, writer)
        objects.setdefault(k, t - 0.5)
        fate = rng.random()
        if fate < 0.06:  # killed right after the upload, before the event
            alive.remove(writer)
            alive.append(f"w{next(fresh)}")
        elif step == c["end_step"]:
            add(ev("done", t, worker=writer, chunk=idx, generation=gen, step=step, key=k, md5="m"))
        elif fate < 0.16:
            add(ev("yield", t, worker=writer, chunk=idx, generation=gen, step=step, key=k, md5="m"))
        elif fate < 0.22:  # stalls between the upload and the event
            due = t + rng.uniform(30, 400)
            stalled[writer] = (due, checkpoint(due, step, idx, gen, writer))
        else:
            add(checkpoint(t, step, idx, gen, writer))
            if fate < 0.26:  # and dies silently after it
                alive.remove(writer)
                alive.append(f"w{next(fresh)}")
    return events, objects


def lagging_view(events: list, at: float, rng: random.Random):
    """Returns the ledger of a reader at store time `at` whose listing shows each event MAX_LAG
    after its write at most (each event its own lag), so it may miss any of the newest."""
    return fold([e for e in events if e.server_time + rng.uniform(0, MAX_LAG) <= at])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_no_checkpoint_a_lagging_reader_may_resume_from_is_ever_deleted(seed):
    events, objects = simulate(seed)
    rng = random.Random(seed ^ 0x5EED)
    end = max(e.server_time for e in events)
    accepted_in_the_end = {cp["key"] for cp in fold(events).checkpoints("r1")}
    deleted_some = False
    for at in sorted(rng.uniform(0, end + 2 * LEASE) for _ in range(12)):
        # The deleter lags too, and judges by the latest store time it has folded.
        deleter = lagging_view(events, at, rng)
        now, view = deleter.latest_time(), run_view(deleter, "r1")
        if view is None:
            continue  # it has not seen the plan yet
        listed = [Stat(k, 10, t) for k, t in objects.items() if t <= at]
        verdict = decide(view, listed, now, RULE)
        deleted = set(verdict.delete)
        deleted_some |= bool(deleted)
        # An object no accepted event named goes only if none ever will: its writer is done with it.
        orphans = deleted - {cp["key"] for cp in deleter.checkpoints("r1")}
        assert not orphans & accepted_in_the_end, orphans & accepted_in_the_end
        for later in (at, at + rng.uniform(0, LEASE)):
            reader = lagging_view(events, later, rng)
            for c in reader.chunks("r1"):
                if c["state"] in ("ready", "running"):
                    resume = max(c["step_reached"], c["start_step"])
                    tried = [cp["key"] for cp in reader.checkpoints("r1", up_to_step=resume)][:RULE.fallbacks]
                    assert not deleted & set(tried), (c, tried, deleted)
                assert c["start_checkpoint_key"] not in deleted
                assert c["state"] != "done" or c["checkpoint_key"] not in deleted
            newest = reader.checkpoints("r1")[:1]
            assert not newest or newest[0]["key"] not in deleted  # `export --checkpoint latest`
    # Nothing to check in a history where nothing ever went: hypothesis draws many where much does.
    if len(events) > 30:
        assert deleted_some

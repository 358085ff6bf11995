"""The fold of a collaborative run's rounds (docs/collaborative.md): units fenced like chunks, a
round closed when every change is in or, past round_timeout in store time, with min_replicas, the
first outer step of a closed round accepted, and every reader agreeing whatever the order."""

from __future__ import annotations

import itertools
import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shardrun.journal import Event
from shardrun.ledger.db import Ledger

REPLICAS, SYNC, STEPS = 3, 10, 25  # 3 rounds: [0, 10), [10, 20), [20, 25)
TIMEOUT_MIN = 30.0


def plan(time=0.0, min_replicas=REPLICAS) -> Event:
    collaborative = {"replicas": REPLICAS, "sync_every": SYNC, "rounds": 3, "steps_per_replica": STEPS,
                     "outer_lr": 0.7, "outer_momentum": 0.9, "min_replicas": min_replicas,
                     "round_timeout_minutes": TIMEOUT_MIN, "parts": [{"replica": i, "shards": []} for i in range(REPLICAS)]}
    run = {"name": "c", "model": "espcn", "scale": 2, "channels": 1, "epochs": 1, "batch_size": 8,
           "patch_size": 16, "steps_per_epoch": STEPS, "steps_total": STEPS, "step_seconds": 0.1,
           "config": {}, "chunks": [], "mode": "collaborative", "collaborative": collaborative}
    payload = {"plan_id": "p1", "replaces": None, "job": "j", "fingerprint": "f", "images": 6,
               "image_bytes": 600, "manifest_key": "j/m.json", "manifest_md5": "0", "platform": "local",
               "profile": "p", "lease_seconds": 60.0,
               "accounts": [{"name": "alice", "store": "memory://a", "quota_bytes": 10**9, "reserve_bytes": 0}],
               "shards": [], "runs": [run], "rejected": []}
    return Event(f"{time:012.3f}-plan", "plan", "planner", payload=payload, server_time=time)


_ids = itertools.count()


def ev(kind, time, worker="w1", chunk=0, generation=0, **payload) -> Event:
    return Event(f"{time:012.3f}-{next(_ids):06d}-{kind}", kind, worker, "c", chunk, generation, payload,
                 server_time=time)


def base_of(round_) -> str:
    """The sha256 of the weights a round starts from: round 0's are built by every worker."""
    return "initial" if round_ == 0 else f"weights{round_ - 1}"


def done(time, idx, worker="w1", generation=0, with_change=True, base=None) -> Event:
    round_ = idx // REPLICAS
    change = {"change": {"key": f"j/rounds/c/r{round_:06d}/change-{idx % REPLICAS}", "sha256": f"s{idx}",
                         "md5": "m", "size": 100, "base": base or base_of(round_)}} if with_change else {}
    return ev("done", time, worker, idx, generation, key=f"ckpt-{idx}-{worker}", md5="m", **change)


def outer(time, round_, replicas, worker="w1", base=None, changes=None) -> Event:
    arrays = lambda kind: {"key": f"j/rounds/c/r{round_:06d}/{kind}-{worker}", "sha256": f"{kind}{round_}",  # noqa: E731
                           "md5": "m", "size": 40}
    return ev("outer", time, worker, round_, replicas=replicas, weights=arrays("weights"),
              momentum=arrays("momentum"), base=base or base_of(round_),
              changes=changes if changes is not None else [f"s{round_ * REPLICAS + i}" for i in replicas],
              validation={"psnr": 30.0 + round_, "ssim": 0.9, "bicubic_psnr": 28.0, "bicubic_ssim": 0.8})


def trained_round(round_, start, workers=("w1", "w2", "w3")) -> list[Event]:
    """Every replica of `round_` claimed and done by its own worker, from store time `start`."""
    events = []
    for i, w in enumerate(workers):
        events += [ev("claim", start + i * 0.1, w, round_ * REPLICAS + i), done(start + 5 + i, round_ * REPLICAS + i, w)]
    return events


def fold(events) -> Ledger:
    ledger = Ledger.open(None)
    ledger.add_events(events)
    return ledger


def round_row(ledger, r) -> dict:
    return ledger.rounds("c")[r]


def test_a_round_closes_when_every_change_is_in_and_the_first_outer_step_opens_the_next():
    events = [plan()] + trained_round(0, 1.0)
    ledger = fold(events[:-1])
    assert round_row(ledger, 0)["state"] == "open"  # two of three changes in: it waits
    ledger = fold(events)
    r0 = round_row(ledger, 0)
    assert (r0["state"], r0["closed_by"], json.loads(r0["replicas"]), r0["change_bytes"]) == ("closed", "all", [0, 1, 2], 300)
    assert [c["state"] for c in ledger.chunks("c")][3:6] == ["waiting"] * 3
    ledger = fold(events + [outer(9.0, 0, [0, 1, 2], "w2"), outer(9.5, 0, [0, 1, 2], "w3")])
    r0 = round_row(ledger, 0)
    assert (r0["state"], r0["outer_worker"], r0["weights_key"], r0["done_time"]) == (
        "done", "w2", "j/rounds/c/r000000/weights-w2", 9.0)  # the first in fold order, once
    assert json.loads(r0["validation"])["psnr"] == 30.0
    assert (round_row(ledger, 1)["state"], round_row(ledger, 1)["opened_time"]) == ("open", 9.0)
    assert [c["state"] for c in ledger.chunks("c")][3:6] == ["ready"] * 3
    assert not ledger.finished()


def test_an_outer_step_is_refused_before_its_round_closes_or_for_other_replicas():
    events = [plan()] + trained_round(0, 1.0)
    early = outer(3.0, 0, [0, 1, 2])  # written before the changes were in
    wrong = outer(9.0, 0, [0, 1])  # not the changes the round closed with
    ledger = fold(events + [early, wrong])
    assert round_row(ledger, 0)["state"] == "closed" and round_row(ledger, 1)["state"] == "waiting"
    assert fold(events + [early, wrong, outer(9.5, 0, [0, 1, 2])]).rounds("c")[0]["state"] == "done"


def test_a_change_or_an_outer_step_made_from_other_inputs_is_refused():
    events = [plan()] + trained_round(0, 1.0) + [outer(9.0, 0, [0, 1, 2])]
    events += [ev("claim", 10.0, "w1", 3), done(15.0, 3, "w1", base="weights0-another-copy")]
    ledger = fold(events)
    assert ledger.chunks("c")[3]["state"] == "running"  # its change was made from other weights
    events += [done(16.0, 3, "w1"), ev("claim", 10.1, "w2", 4), done(17.0, 4, "w2"),
               ev("claim", 10.2, "w3", 5), done(18.0, 5, "w3")]
    stale = [outer(19.0, 1, [0, 1, 2], base="weights-read-before-a-refold"),
             outer(19.5, 1, [0, 1, 2], changes=["s3", "s4", "s-other"])]
    ledger = fold(events + stale)
    assert ledger.rounds("c")[1]["state"] == "closed"  # neither names the round's inputs
    assert fold(events + stale + [outer(20.0, 1, [0, 1, 2])]).rounds("c")[1]["state"] == "done"


def test_a_done_without_its_change_and_a_fenced_workers_done_are_ignored():
    events = [plan(), ev("claim", 1.0, "w1", 0), ev("claim", 1.1, "w2", 0), done(5.0, 0, "w2"),
              done(5.5, 0, "w1", with_change=False)]
    ledger = fold(events)
    unit = ledger.chunks("c")[0]
    assert (unit["state"], unit["owner"], unit["change_key"]) == ("running", "w1", None)
    ledger = fold(events + [done(6.0, 0, "w1")])
    unit = ledger.chunks("c")[0]
    assert (unit["state"], unit["change_key"], unit["change_size"]) == ("done", "j/rounds/c/r000000/change-0", 100)


def test_a_round_past_its_timeout_closes_with_min_replicas_and_drops_the_late_one():
    start = [plan(min_replicas=2), ev("claim", 1.0, "w1", 0), ev("claim", 1.1, "w2", 1), ev("claim", 1.2, "w3", 2),
             done(5.0, 0, "w1"), done(6.0, 1, "w2")]
    timeout = TIMEOUT_MIN * 60 + 1.0  # from the round's first claim
    assert round_row(fold(start + [ev("close", timeout - 0.1, "w1", 0)]), 0)["state"] == "open"  # too early
    ledger = fold(start + [ev("close", timeout, "w1", 0)])
    r0 = round_row(ledger, 0)
    assert (r0["state"], r0["closed_by"], json.loads(r0["replicas"]), r0["closed_time"]) == (
        "closed", "timeout", [0, 1], timeout)
    late = ledger.chunks("c")[2]
    assert (late["state"], late["owner"]) == ("dropped", None)
    # The straggler's change arrives after the close: fenced off, the round keeps its two.
    ledger = fold(start + [ev("close", timeout, "w1", 0), done(timeout + 1, 2, "w3"), outer(timeout + 2, 0, [0, 1])])
    assert ledger.chunks("c")[2]["state"] == "dropped" and round_row(ledger, 0)["state"] == "done"
    assert [c["state"] for c in ledger.chunks("c")][3:6] == ["ready"] * 3  # it starts again next round


def test_a_round_nobody_worked_on_has_not_waited():
    # Planned a day before anyone starts: the timeout runs from the round's first claim.
    day = 86_400.0
    events = [plan(min_replicas=2), ev("claim", day, "w1", 0), ev("claim", day + 1, "w2", 1),
              done(day + 5, 0, "w1"), done(day + 6, 1, "w2"), ev("close", day + 7, "w1", 0)]
    assert round_row(fold(events), 0)["state"] == "open"
    closed = fold(events + [ev("close", day + TIMEOUT_MIN * 60, "w1", 0)])
    assert (round_row(closed, 0)["state"], json.loads(round_row(closed, 0)["replicas"])) == ("closed", [0, 1])


def test_a_round_below_min_replicas_waits_past_its_timeout():
    events = [plan(min_replicas=2), ev("claim", 1.0, "w1", 0), done(5.0, 0, "w1"),
              ev("close", TIMEOUT_MIN * 60 * 10, "w1", 0)]
    assert round_row(fold(events), 0)["state"] == "open"


def test_the_run_is_finished_after_its_last_rounds_outer_step():
    events = [plan()]
    for r in range(3):
        events += trained_round(r, 20.0 * r + 10) + [outer(20.0 * r + 19, r, [0, 1, 2])]
    ledger = fold(events[:-1])
    assert not ledger.finished() and round_row(ledger, 2)["state"] == "closed"
    ledger = fold(events)
    assert ledger.finished() and [r["state"] for r in ledger.rounds("c")] == ["done"] * 3
    assert [(c["start_step"], c["end_step"]) for c in ledger.chunks("c")][-1] == (20, 25)


def test_every_reader_agrees_on_the_rounds_whatever_order_it_reads_them_in():
    timeout = TIMEOUT_MIN * 60
    events = [plan(min_replicas=2)] + trained_round(0, 1.0) + [outer(9.0, 0, [0, 1, 2]), outer(9.2, 0, [0, 1, 2], "w2")]
    events += [ev("claim", 10.0, "w1", 3), ev("claim", 10.1, "w2", 4), ev("claim", 10.2, "w3", 5),
               done(15.0, 3, "w1"), done(16.0, 4, "w2"), ev("close", 10.0 + timeout, "w2", 1),
               done(10.0 + timeout + 1, 5, "w3"), outer(10.0 + timeout + 2, 1, [0, 1], "w3"),
               ev("close", 10.0 + timeout + 3, "w1", 1)]
    reference = fold(events).dump()
    assert [r[2] for r in sorted(reference["rounds"])][:2] == ["done", "done"]
    rng = random.Random(5)
    for _ in range(8):
        shuffled = events[:]
        rng.shuffle(shuffled)
        ledger = Ledger.open(None)
        for at in range(0, len(shuffled), 3):  # in several syncs, as a reader that lags would
            ledger.add_events(shuffled[at:at + 3])
        assert ledger.dump() == reference


@st.composite
def round_event_sets(draw):
    """Random collaborative events: claims, heartbeats, checkpoints, yields, expiries, dones with
    and without their change, closes, rejects and outer steps naming any replicas, by three
    workers, at random store times (the round timeout is 30 min: 1800 s)."""
    events = [plan(min_replicas=draw(st.integers(1, REPLICAS)))]
    for n in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["claim", "heartbeat", "checkpoint", "yield", "expire", "done", "done",
                                     "close", "outer", "reject", "fail"]))
        time = draw(st.integers(1, 4000)) * 1.0
        worker = draw(st.sampled_from(["w1", "w2", "w3"]))
        idx, generation = draw(st.integers(0, 3 * REPLICAS - 1)), draw(st.integers(0, 2))
        if kind == "done":
            e = done(time, idx, worker, generation, with_change=draw(st.booleans()))
        elif kind == "outer":
            e = outer(time, draw(st.integers(0, 2)), sorted(draw(st.sets(st.integers(0, REPLICAS - 1), min_size=1))),
                      worker)
        elif kind == "close":
            e = ev("close", time, worker, draw(st.integers(0, 2)))
        else:
            payload = {"step": draw(st.integers(0, STEPS))} if kind in ("heartbeat", "checkpoint") else {}
            if kind == "checkpoint":
                payload.update(key=f"ck{n}", md5="m")
            e = ev(kind, time, worker, idx, generation, **payload)
        events.append(e)
    return events


@settings(max_examples=150, deadline=None)
@given(round_event_sets(), st.randoms(use_true_random=False))
def test_readers_agree_on_random_rounds(events, rng):
    reference = fold(events).dump()
    shuffled = events[:]
    rng.shuffle(shuffled)
    ledger = Ledger.open(None)
    at = 0
    while at < len(shuffled):
        step = rng.randint(1, 5)
        ledger.add_events(shuffled[at:at + step])
        at += step
    assert ledger.dump() == reference

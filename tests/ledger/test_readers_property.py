"""Outcome: two readers agree, always. Random event sets — duplicate copies of one id at other
store times, late arrivals, replacing and stale plans, events of another plan, malformed events —
fed to several readers in random orders and batches, with restarts (the ledger file reopened) and
moves of their base (a refold starts from it): every reader's derived tables end identical, row by
row, and so do their bad events.

And on a store: random journals written over a day and a half into the hour buckets (by writers
whose clocks are up to SKEW_S off), the flat v1 folder, misplaced and malformed objects, read by
readers that sync at random through listings that lag up to LAG_S, restart, drop the events their
base holds, publish snapshots that a newcomer starts from: every reader ends with the ledger of a
fold of the whole journal from scratch."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardrun import paths
from shardrun.clock import FakeClock
from shardrun.journal import LAG_S, SKEW_S, Event, Journal
from shardrun.ledger.db import Ledger, LedgerSettings
from shardrun.storage.memory import MemoryStore
from tests.lagging_store import LaggingStore
from tests.ledger.test_db import CHUNKS, RUNS, STEPS, plan_event
from tests.ledger.test_readers_agree import replanned

PLANS = (None, "plan-1", "plan-2", "plan-x")  # None: a v1 event; plan-x: a plan never seen


@st.composite
def event_sets(draw):
    events = [plan_event()]
    if draw(st.booleans()):
        change = draw(st.sampled_from([{"runs_changed": {"r2": {"epochs": 2}}}, {"add": ["r3"]}, {}]))
        events.append(replanned("plan-2", draw(st.integers(1, 400)) * 1.0, "plan-1", **change))
    if draw(st.booleans()):  # a stale plan that does not say what it replaces
        events.append(plan_event("plan-x", draw(st.integers(1, 400)) * 1.0))
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["claim", "heartbeat", "checkpoint", "yield", "done", "fail", "expire", "leave"]))
        payload = {}
        if kind in ("heartbeat", "checkpoint", "yield"):
            payload["step"] = draw(st.integers(0, CHUNKS * STEPS))
        if kind in ("checkpoint", "yield", "done"):
            payload.update(key=f"ck{draw(st.integers(0, 5))}", md5="m")
        if kind in ("heartbeat", "checkpoint"):
            payload.update(loss=draw(st.floats(0, 1)), patches_per_second=draw(st.floats(1, 100)))
        time = draw(st.integers(1, 500)) * 1.0
        events.append(Event(f"e{len(events):03d}", kind, draw(st.sampled_from(["w1", "w2", "w3"])),
                            draw(st.sampled_from(RUNS + ("r3",))), draw(st.integers(0, CHUNKS - 1)),
                            draw(st.integers(0, 2)), payload, time, plan=draw(st.sampled_from(PLANS))))
    for _ in range(draw(st.integers(0, 4))):  # copies of an id at another store time (a lost answer's retry)
        e = draw(st.sampled_from(events))
        t = draw(st.integers(0, 500)) * 1.0
        events.append(Event(e.id, e.kind, e.worker, e.run, e.chunk, e.generation, e.payload, t, e.plan))
    malformed = [
        Event("m-gen", "claim", "w1", "r1", 0, "0", {}, 2.0),
        Event("m-step", "heartbeat", "w1", "r1", 0, 0, {"step": None}, 3.0),
        Event("m-text", "heartbeat", "w1", "r1", 0, 0, {"step": "ten"}, 4.0),
        Event("m-time", "claim", "w2", "r1", 0, 0, {}, None),
        Event("m-plan", "plan", "planner", payload={**plan_event("plan-m").payload, "replaces": "plan-1",
                                                    "shards": None}, server_time=5.0),
    ]
    events += draw(st.lists(st.sampled_from(malformed), max_size=3, unique_by=lambda e: e.id))
    return events


KEEP_EVENTS = LedgerSettings(prune=False)  # events fed in any order: a refold may need every one


def opened(path: Path, settings: LedgerSettings = KEEP_EVENTS) -> Ledger:
    ledger = Ledger.open(path, settings)
    ledger.db.execute("PRAGMA synchronous = OFF")  # the test's files need no durability: keep it fast
    return ledger


def read_in(events: list[Event], path: Path, seed: int) -> tuple[dict, list]:
    """Folds `events` as one reader would: a random order, random batches, reopening its file at times."""
    rng = random.Random(seed)
    ledger = opened(path)
    order = events[:]
    rng.shuffle(order)
    while order:
        n = rng.randint(1, 8)
        ledger.add_events(order[:n])
        order = order[n:]
        if rng.random() < 0.3:  # the base moves to a random point: later refolds start from it
            ledger.advance_base(rng.randint(0, 500) * 1.0)
        if rng.random() < 0.3:  # a restart: the process ends, the next one opens the same file
            ledger.close()
            ledger = opened(path)
    result = ledger.dump(), ledger.bad_events(), ledger.event_count()
    ledger.close()
    return result


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=event_sets(), seeds=st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3))
def test_every_reader_ends_with_the_same_ledger(events, seeds):
    # In memory where the system has a RAM folder: the test reopens files, it does not test disks.
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        reference = Ledger.open(None)
        reference.add_events(events)
        expected = reference.dump(), reference.bad_events(), reference.event_count()
        for i, seed in enumerate(seeds):
            got = read_in(events, Path(tmp) / f"reader-{i}.db", seed)
            assert got[0] == expected[0]  # every derived table, row by row
            assert got[1:] == expected[1:]


# -- on a store: the bucketed journal, the cursor, pruned ledgers and snapshots -------------------

T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z
SPAN_S = 36 * 3600
KINDS = ["claim", "heartbeat", "heartbeat", "checkpoint", "yield", "done", "fail", "expire", "leave"]


@st.composite
def journals_on_a_store(draw):
    """Returns (writes, readers): writes as (store time, layout, skew, Event or bytes), and each
    reader's (first sync, sync interval, restart chance); one write in a few is flat (a writer of
    an earlier shardrun), misplaced (a clock hours off) or not an event at all."""
    writes = [(0.0, "v2", 0.0, plan_event())]
    for i in range(draw(st.integers(5, 70))):
        t = float(draw(st.integers(1, SPAN_S)))
        layout = draw(st.sampled_from(["v2"] * 8 + ["flat", "misplaced", "garbage"]))
        skew = float(draw(st.integers(-int(SKEW_S) + 60, int(SKEW_S) - 60)))
        if layout == "misplaced":
            skew = float(draw(st.sampled_from([-1, 1])) * draw(st.integers(int(SKEW_S) + 7200, 12 * 3600)))
        if layout == "garbage":
            writes.append((t, "v2", skew, f"g{i:03d}"))
            continue
        kind = draw(st.sampled_from(KINDS))
        payload = {}
        if kind in ("heartbeat", "checkpoint", "yield"):
            payload["step"] = draw(st.integers(0, CHUNKS * STEPS))
        if kind in ("checkpoint", "yield", "done"):
            payload.update(key=f"ck{draw(st.integers(0, 5))}", md5="m")
        event = Event(f"e{i:03d}", kind, draw(st.sampled_from(["w1", "w2", "w3"])), draw(st.sampled_from(RUNS)),
                      draw(st.integers(0, CHUNKS - 1)), draw(st.integers(0, 2)), payload,
                      plan=draw(st.sampled_from([None, "plan-1", "plan-1", "plan-x"])))
        writes.append((t, layout, skew, event))
    readers = [(float(draw(st.integers(0, 6 * 3600))), float(draw(st.integers(20 * 60, 4 * 3600))),
                draw(st.floats(0, 0.4))) for _ in range(3)]
    publish = float(draw(st.integers(SPAN_S // 3, SPAN_S)))
    return sorted(writes, key=lambda w: w[0]), readers, publish


def put(store: MemoryStore, layout: str, skew: float, item, now: float) -> None:
    if isinstance(item, str):  # not an event: garbage in a bucket
        store.put_bytes(paths.bucket_event_key("j", paths.bucket_start(now + skew), item), b"{not json")
    elif layout == "flat":
        store.put_bytes(paths.event_key("j", item.id), item.to_bytes())
    else:  # placed by the writer's clock, `skew` off the store's
        store.put_bytes(paths.bucket_event_key("j", paths.bucket_start(now + skew), item.id), item.to_bytes())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=journals_on_a_store(), seed=st.integers(0, 2**32 - 1))
def test_bounded_readers_of_a_bucketed_journal_end_with_the_ledger_of_a_fold_from_scratch(case, seed):
    writes, readers, publish_at = case
    rng = random.Random(seed)
    clock = FakeClock(T0)
    store = MemoryStore(clock=clock)
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        views = [LaggingStore(store, max_lag_s=LAG_S - 60, seed=f"{seed}/{i}", now=clock.now) for i in range(4)]
        files = [Path(tmp) / f"reader-{i}.db" for i in range(4)]
        ledgers: list[Ledger | None] = [None] * 4
        actions = [(w[0], 0, ("write", w)) for w in writes]
        for i, (first, every, _) in enumerate(readers):
            actions += [(first + k * every, 1, ("sync", i)) for k in range(int((SPAN_S - first) // every) + 1)]
        actions += [(publish_at, 2, ("publish", 0)), (publish_at + 600, 3, ("join", 3))]
        actions += [(publish_at + 600 + k * 1800, 4, ("sync", 3)) for k in range(int((SPAN_S - publish_at) // 1800) + 1)]
        for t, _, (what, arg) in sorted(actions, key=lambda a: (a[0], a[1])):
            clock.advance(T0 + t - clock.now())
            if what == "write":
                _, layout, skew, item = arg
                put(store, layout, skew, item, clock.now())
            elif what == "join":
                ledgers[arg] = Ledger.from_snapshot(store, "j", files[arg]) if store.exists(
                    paths.ledger_snapshot_key("j")) else Ledger.open(files[arg])
            elif what == "publish" and ledgers[arg] is not None:
                ledgers[arg].publish(store, "j")
            elif what == "sync" and (arg < 3 or ledgers[arg] is not None):
                if ledgers[arg] is None:
                    ledgers[arg] = Ledger.open(files[arg])
                ledgers[arg].sync(Journal(views[arg], "j", clock))
                if arg < 3 and rng.random() < readers[arg][2]:  # a restart
                    ledgers[arg].close()
                    ledgers[arg] = Ledger.open(files[arg])
        clock.advance(LAG_S + LedgerSettings().flat_recheck_s + 60)  # every object listed, every folder due
        reference = Ledger.open(None, KEEP_EVENTS)
        whole = Journal(store, "j", clock)
        reference.add_events(*whole.read(whole.keys()))
        expected = reference.dump(), reference.bad_events(), reference.event_count()
        for i, ledger in enumerate(ledgers):
            ledger = ledger or Ledger.open(files[i])
            for _ in range(2):
                ledger.sync(Journal(views[i], "j", clock))
            assert ledger.dump() == expected[0]  # every derived table, row by row
            assert (ledger.bad_events(), ledger.event_count()) == expected[1:]
            ledger.close()

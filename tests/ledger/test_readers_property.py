"""Outcome: two readers agree, always. Random event sets — duplicate copies of one id at other
store times, late arrivals, replacing and stale plans, events of another plan, malformed events —
fed to several readers in random orders and batches, with restarts (the ledger file reopened):
every reader's derived tables end identical, row by row, and so do their bad events."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardrun.journal import Event
from shardrun.ledger.db import Ledger
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


def opened(path: Path) -> Ledger:
    ledger = Ledger.open(path)
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

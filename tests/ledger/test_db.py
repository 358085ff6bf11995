"""The ledger folds the journal deterministically, with the claim protocol's fencing rules."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shardrun.clock import FakeClock
from shardrun.journal import Event, Journal
from shardrun.ledger.schema import SCHEMA_VERSION
from shardrun.ledger.db import Ledger
from shardrun.storage.memory import MemoryStore

RUNS = ("r1", "r2")
CHUNKS = 3
STEPS = 100  # per chunk


def plan_event(plan_id="plan-1", time=0.0, replaces=None, lease=600.0) -> Event:
    runs = [{"name": r, "model": "decusr", "scale": 2, "channels": 1, "epochs": 1, "batch_size": 8,
             "patch_size": 32, "steps_per_epoch": CHUNKS * STEPS, "steps_total": CHUNKS * STEPS,
             "step_seconds": 0.1, "config": {}, "chunks": [[i * STEPS, (i + 1) * STEPS] for i in range(CHUNKS)]}
            for r in RUNS]
    payload = {"plan_id": plan_id, "replaces": replaces, "job": "j", "fingerprint": "f" + plan_id,
               "images": 10, "image_bytes": 1000, "manifest_key": "j/plans/m.json", "manifest_md5": "0",
               "platform": "colab-free", "profile": "p", "lease_seconds": lease,
               "accounts": [{"name": "alice", "store": "memory://a", "quota_bytes": 10**9, "reserve_bytes": 0}],
               "shards": [{"id": "shard-1", "account": "alice", "key": "j/shards/shard-1.tar", "size": 500,
                           "md5": "x", "images": 10}],
               "runs": runs, "rejected": [{"path": "bad.png", "reason": "not an image"}]}
    return Event(f"{time:012.3f}-{plan_id}", "plan", "planner", payload=payload, server_time=time)


def ev(kind, time, worker="w1", run="r1", chunk=0, generation=0, **payload) -> Event:
    return Event(f"{time:012.3f}-{kind}-{worker}-{random.random():.6f}", kind, worker, run, chunk, generation,
                 payload, server_time=time)


def fold(events) -> Ledger:
    ledger = Ledger.open(None)
    ledger.add_events(events)
    return ledger


def chunk(ledger, run="r1", idx=0) -> dict:
    return next(c for c in ledger.chunks(run) if c["idx"] == idx)


def test_plan_fills_runs_chunks_accounts_and_rejected():
    ledger = fold([plan_event()])
    assert [(r["name"], r["steps_total"], r["steps_done"]) for r in ledger.runs()] == [("r1", 300, 0), ("r2", 300, 0)]
    assert ledger.chunk_counts()["r1"] == {"waiting": 2, "ready": 1, "running": 0, "done": 0}
    assert ledger.accounts()[0]["placed_bytes"] == 500
    assert ledger.rejected() == [{"path": "bad.png", "reason": "not an image"}]


def test_earliest_claim_wins_and_fencing_ignores_the_loser():
    ledger = fold([plan_event(), ev("claim", 10, "late"), ev("claim", 5, "early"),
                   ev("heartbeat", 11, "late", step=50), ev("done", 12, "late", key="k", md5="m")])
    c = chunk(ledger)
    assert (c["state"], c["owner"], c["step_reached"]) == ("running", "early", 0)


def test_done_completes_once_and_readies_the_next_chunk_from_its_checkpoint():
    ledger = fold([plan_event(), ev("claim", 1), ev("checkpoint", 2, step=60, key="ck60", md5="m60"),
                   ev("done", 3, key="final", md5="mf"), ev("done", 4, key="again", md5="x")])
    assert chunk(ledger)["state"] == "done" and chunk(ledger)["checkpoint_key"] == "final"
    nxt = chunk(ledger, idx=1)
    assert (nxt["state"], nxt["start_checkpoint_key"], nxt["start_checkpoint_md5"]) == ("ready", "final", "mf")
    assert ledger.runs()[0]["steps_done"] == STEPS


def test_yield_returns_the_chunk_at_the_next_generation_with_its_step():
    ledger = fold([plan_event(), ev("claim", 1), ev("yield", 2, step=42, key="ck42", md5="m"),
                   ev("heartbeat", 3, step=90)])  # the old generation can no longer report
    c = chunk(ledger)
    assert (c["state"], c["generation"], c["owner"], c["step_reached"], c["checkpoint_key"]) == (
        "ready", 1, None, 42, "ck42")
    again = fold([plan_event(), ev("claim", 1), ev("yield", 2, step=42, key="ck42", md5="m"),
                  ev("claim", 3, "w2", generation=0), ev("claim", 4, "w3", generation=1)])
    assert chunk(again)["owner"] == "w3"  # a claim for the old generation is stale


def test_lease_expires_only_after_the_lease_in_server_time():
    base = [plan_event(lease=600), ev("claim", 100), ev("heartbeat", 200, step=10)]
    early = fold(base + [ev("expire", 799, "w2")])
    assert chunk(early)["state"] == "running"
    late = fold(base + [ev("expire", 800, "w2")])
    c = chunk(late)
    assert (c["state"], c["generation"]) == ("ready", 1)
    assert "lease expired" in c["last_error"]


def test_a_new_plan_replaces_only_when_it_says_so():
    ledger = fold([plan_event("plan-1", 0), ev("claim", 1), plan_event("plan-2", 2)])
    assert ledger.plan()["id"] == "plan-1" and chunk(ledger)["state"] == "running"
    ledger = fold([plan_event("plan-1", 0), ev("claim", 1), plan_event("plan-2", 2, replaces="plan-1")])
    assert ledger.plan()["id"] == "plan-2" and chunk(ledger)["state"] == "ready"


# -- determinism, as properties ------------------------------------------------------------------


@st.composite
def journals(draw):
    events = [plan_event()]
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["claim", "heartbeat", "checkpoint", "yield", "done", "fail", "expire"]))
        payload = {}
        if kind in ("heartbeat", "checkpoint", "yield"):
            payload["step"] = draw(st.integers(0, CHUNKS * STEPS))
        if kind in ("checkpoint", "yield", "done"):
            payload.update(key=f"ck{draw(st.integers(0, 9))}", md5="m")
        time = draw(st.integers(1, 2000)) * 1.0
        events.append(Event(f"e{len(events):03d}", kind, draw(st.sampled_from(["w1", "w2", "w3"])),
                            draw(st.sampled_from(RUNS)), draw(st.integers(0, CHUNKS - 1)),
                            draw(st.integers(0, 2)), payload, time))
    return events


@settings(max_examples=150, deadline=None)
@given(events=journals(), seed=st.integers(0, 2**32 - 1), batches=st.integers(1, 6))
def test_any_arrival_order_gives_the_same_ledger(events, seed, batches):
    expected = fold(events).dump()
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    ledger = Ledger.open(None)
    size = max(1, len(shuffled) // batches)
    for start in range(0, len(shuffled), size):
        ledger.add_events(shuffled[start:start + size])  # incremental syncs, with late arrivals
    assert ledger.dump() == expected


@settings(max_examples=50, deadline=None)
@given(events=journals())
def test_folding_the_same_events_twice_changes_nothing(events):
    ledger = fold(events)
    once = ledger.dump()
    result = ledger.add_events(events)
    assert result.new_events == 0
    assert ledger.dump() == once


# -- with a real journal on a store --------------------------------------------------------------


def test_sync_reads_only_new_events_and_records_unreadable_ones(tmp_path):
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    journal = Journal(store, "j", clock)
    store.put_bytes("j/journal/" + plan_event().id + ".json", plan_event().to_bytes())
    ledger = Ledger.open(tmp_path / "ledger.db")
    assert ledger.sync(journal).new_events == 1
    clock.advance(1)
    journal.append("claim", "w1", "r1", 0, 0)
    store.put_bytes("j/journal/garbage.json", b"{not json")
    result = ledger.sync(journal)
    assert (result.new_events, result.bad_events) == (1, 1)
    assert ledger.sync(journal).new_events == 0  # nothing read twice, the bad object not retried
    assert chunk(ledger)["owner"] == "w1"
    assert ledger.bad_events()[0]["key"] == "j/journal/garbage.json"
    ledger.close()
    reopened = Ledger.open(tmp_path / "ledger.db")
    assert reopened.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert chunk(reopened)["owner"] == "w1"


def test_snapshot_round_trip(tmp_path):
    store = MemoryStore()
    ledger = fold([plan_event(), ev("claim", 1)])
    ledger.publish(store, "j")
    copy = Ledger.from_snapshot(store, "j", tmp_path / "copy.db")
    assert copy.dump() == ledger.dump()
    assert copy.event_count() == 2


def test_a_ledger_of_an_older_schema_is_migrated_and_refolded(tmp_path):
    import json

    import sqlite_utils

    from shardrun.ledger.schema import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    MIGRATIONS[0](db)  # a version-1 ledger, as an older shardrun wrote it
    db.execute("PRAGMA user_version = 1")
    events = [plan_event(), ev("claim", 1), ev("checkpoint", 2, step=50, key="ck50", md5="m")]
    for e in events:
        db["events"].insert({"id": e.id, "server_time": e.server_time, "kind": e.kind, "worker": e.worker,
                             "run": e.run, "chunk": e.chunk, "generation": e.generation,
                             "payload": json.dumps(e.payload)})
    db.conn.commit()
    db.close()
    ledger = Ledger.open(path)
    assert ledger.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [c["key"] for c in ledger.checkpoints("r1")] == ["ck50"]
    assert chunk(ledger)["owner"] == "w1"

"""Every reader agrees (DESIGN §5): malformed events, duplicate copies, replacing plans and
events of another plan give every reader the same ledger, whatever it saw first."""

from __future__ import annotations

import json

import pytest

from shardrun import paths
from shardrun.journal import Event, Journal
from shardrun.ledger.db import Ledger
from shardrun.storage.memory import MemoryStore
from tests.ledger.test_db import CHUNKS, chunk, ev, fold, plan_event


def raw(body: dict) -> bytes:
    return json.dumps(body).encode()


def good_body(**changes) -> dict:
    body = {"id": "e1", "kind": "claim", "worker": "w1", "run": "r1", "chunk": 0, "generation": 0, "payload": {}}
    return {**body, **changes}


# -- defect 4: the fold is total --------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {"generation": "0"}, {"chunk": "0"}, {"generation": True}, {"chunk": -1}, {"run": 3}, {"worker": None},
    {"payload": []}, {"id": 7}, {"kind": "nope"}, {"plan": 5},
    {"kind": "heartbeat", "payload": {"step": None}}, {"kind": "heartbeat", "payload": {"step": "10"}},
    {"kind": "checkpoint", "payload": {"step": 10.5, "key": "k"}}, {"kind": "checkpoint", "payload": {"key": "k"}},
    {"kind": "done", "payload": {"key": 5}}, {"run": None},
])
def test_event_from_bytes_checks_field_types_strictly(changes):
    with pytest.raises(ValueError):
        Event.from_bytes(raw(good_body(**changes)), 1.0)


def test_a_well_formed_event_round_trips_and_a_v1_event_has_no_plan():
    event = Event.from_bytes(raw(good_body()), 1.0)
    assert event.plan is None and Event.from_bytes(event.to_bytes(), 1.0) == event
    assert b'"plan"' not in event.to_bytes()  # a v1 event's bytes are unchanged
    named = Event.from_bytes(raw(good_body(plan="plan-1")), 1.0)
    assert named.plan == "plan-1" and Event.from_bytes(named.to_bytes(), 1.0) == named


def test_a_text_generation_is_refused_alike_by_the_incremental_fold_and_a_refold():
    events = [plan_event(), Event("e-text", "claim", "w1", "r1", 0, "0", {}, 1.0), ev("heartbeat", 2)]
    incremental = fold(events)
    refolded = fold(events)
    refolded.add_events([ev("claim", 0.5, "w2")])  # a late event: this reader refolds
    for ledger in (incremental, refolded):
        assert any(b["key"] == "e-text" and "generation" in b["reason"] for b in ledger.bad_events())
    assert chunk(incremental)["state"] == "ready"
    assert chunk(refolded)["owner"] == "w2"


def test_malformed_events_go_to_bad_events_and_never_fail_a_sync():
    store = MemoryStore()
    journal = Journal(store, "j")
    ledger = Ledger.open(None)
    good = [plan_event(), ev("claim", 1), ev("checkpoint", 5, step=50, key="ck50", md5="m")]
    for e in good:
        store.put_bytes(paths.event_key("j", e.id), e.to_bytes())
    bad = {
        "h-null": good_body(id="h-null", kind="heartbeat", payload={"step": None}),
        "h-text": good_body(id="h-text", kind="heartbeat", payload={"step": "lots"}),
        "p-broken": {"id": "p-broken", "kind": "plan", "worker": "planner", "run": None, "chunk": None,
                     "generation": None, "payload": {**plan_event("plan-2").payload, "replaces": "plan-1", "runs": None}},
    }
    for event_id, body in bad.items():
        store.put_bytes(paths.event_key("j", event_id), raw(body))
    store.put_bytes(paths.event_key("j", "garbage"), b"{not json")
    ledger.sync(journal)
    reasons = {paths.event_id_of(b["key"]): b["reason"] for b in ledger.bad_events()}
    assert set(reasons) == {"h-null", "h-text", "p-broken", "garbage"}
    assert "step" in reasons["h-null"] and "runs" in reasons["p-broken"]
    assert ledger.plan()["id"] == "plan-1" and chunk(ledger)["checkpoint_key"] == "ck50"
    ledger.sync(journal)  # nothing new, nothing fails
    assert len(ledger.bad_events()) == 4


def test_an_event_without_a_server_time_is_bad_not_sorted_somewhere():
    ledger = fold([plan_event(), Event("no-time", "claim", "w1", "r1", 0, 0, {}, None), ev("claim", 3, "w2")])
    assert chunk(ledger)["owner"] == "w2"
    assert [b["key"] for b in ledger.bad_events()] == ["no-time"]


def test_a_fold_that_raises_all_the_same_moves_the_event_to_bad_events(monkeypatch):
    from shardrun.ledger.fold import Fold

    def boom(self, event):
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(Fold, "_on_fail", boom)
    ledger = fold([plan_event(), ev("claim", 1), ev("fail", 2), ev("heartbeat", 3, step=10)])
    assert chunk(ledger)["step_reached"] == 10
    assert "unforeseen" in ledger.bad_events()[0]["reason"] and ledger.event_count() == 3


# -- defect 1: duplicate copies of one event id -----------------------------------------------


def test_two_copies_of_an_event_fold_the_same_whatever_a_reader_saw_first():
    first = ev("claim", 5, "w1")
    second = Event(first.id, first.kind, first.worker, first.run, first.chunk, first.generation, first.payload, 9.0)
    rival = ev("claim", 7, "w2")
    a, b, c = Ledger.open(None), Ledger.open(None), Ledger.open(None)
    a.add_events([plan_event(), second, rival])  # saw only the later copy at first
    assert chunk(a)["owner"] == "w2"
    result = a.add_events([first])  # the earlier copy surfaces: a refolds
    assert result.refolded and chunk(a)["owner"] == "w1"
    b.add_events([plan_event(), first, rival])
    b.add_events([second])  # a later copy changes nothing
    c.add_events([plan_event(), second, first, rival])
    assert a.dump() == b.dump() == c.dump() and a.event_count() == b.event_count() == c.event_count() == 3


def test_a_sync_rereads_a_known_event_when_the_listing_shows_an_earlier_copy():
    class TwoCopies(MemoryStore):
        duplicate_copies = True

    store = TwoCopies()
    journal = Journal(store, "j")
    claim = ev("claim", 0)
    store.put_bytes(paths.event_key("j", plan_event().id), plan_event().to_bytes())
    late_copy = store.put_bytes(paths.event_key("j", claim.id), claim.to_bytes())
    ledger = Ledger.open(None)
    ledger.sync(journal)
    stored = ledger.db.execute("SELECT server_time FROM events WHERE id = ?", [claim.id]).fetchone()[0]
    assert stored == late_copy.mtime
    # The store now lists an earlier copy of the key (as Drive does once a duplicate surfaces).
    import dataclasses

    data, stat = store._objects[paths.event_key("j", claim.id)]
    store._objects[paths.event_key("j", claim.id)] = (data, dataclasses.replace(stat, mtime=stat.mtime - 1))
    assert ledger.sync(journal).refolded
    stored = ledger.db.execute("SELECT server_time FROM events WHERE id = ?", [claim.id]).fetchone()[0]
    assert stored == late_copy.mtime - 1


# -- defect 2: every event names its plan; a re-plan keeps unchanged runs ---------------------


def replanned(plan_id: str, time: float, replaces: str, runs_changed=None, add=(), fingerprint=None) -> Event:
    """A plan replacing `replaces` on the same data, with runs added or changed."""
    base = plan_event(plan_id, time, replaces=replaces)
    payload = json.loads(json.dumps(base.payload))
    payload["fingerprint"] = fingerprint or plan_event().payload["fingerprint"]
    for run in payload["runs"]:
        run.update((runs_changed or {}).get(run["name"], {}))
    for name in add:
        payload["runs"].append({**payload["runs"][0], "name": name})
    return Event(base.id, "plan", "planner", payload=payload, server_time=time, plan=plan_id)


def progressed() -> list[Event]:
    return [plan_event(), ev("claim", 1, run="r1"), ev("done", 2, run="r1", key="ck100", md5="m"),
            ev("claim", 3, run="r2"), ev("checkpoint", 4, run="r2", step=40, key="r2-40", md5="m")]


def test_a_plan_that_adds_a_run_keeps_every_unchanged_run_and_plans_the_new_one():
    ledger = fold(progressed() + [replanned("plan-2", 10, "plan-1", add=["r3"])])
    assert ledger.plan()["id"] == "plan-2"
    assert chunk(ledger, "r1", 0)["state"] == "done" and chunk(ledger, "r1", 1)["state"] == "ready"
    assert chunk(ledger, "r2", 0)["checkpoint_key"] == "r2-40" and chunk(ledger, "r2", 0)["owner"] == "w1"
    assert [c["state"] for c in ledger.chunks("r3")] == ["ready"] + ["waiting"] * (CHUNKS - 1)
    assert {c["key"] for c in ledger.checkpoints("r1")} == {"ck100"}
    assert [r["name"] for r in ledger.runs()] == ["r1", "r2", "r3"]


def test_a_run_whose_settings_changed_starts_over_and_the_others_keep_their_progress():
    ledger = fold(progressed() + [replanned("plan-2", 10, "plan-1", runs_changed={"r2": {"epochs": 2}})])
    assert chunk(ledger, "r1", 0)["state"] == "done"
    assert (chunk(ledger, "r2", 0)["state"], chunk(ledger, "r2", 0)["step_reached"]) == ("ready", 0)
    assert ledger.checkpoints("r2") == [] and ledger.run_metrics().get("r2") is None
    other_data = fold(progressed() + [replanned("plan-2", 10, "plan-1", fingerprint="new data")])
    assert {c["state"] for c in other_data.chunks()} == {"ready", "waiting"}  # new data: all start over


def test_events_of_another_plan_are_ignored_and_v1_events_belong_to_the_plan_in_force():
    base = progressed() + [replanned("plan-2", 10, "plan-1", runs_changed={"r2": {"epochs": 2}})]
    stale = Event("s-claim", "claim", "w9", "r2", 0, 0, {}, 11.0, plan="plan-1")  # not yet synced
    future = Event("f-claim", "claim", "w8", "r2", 0, 0, {}, 12.0, plan="plan-3")
    ledger = fold(base + [stale, future])
    assert chunk(ledger, "r2", 0)["state"] == "ready" and ledger.worker("w9") is None
    ledger.add_events([Event("n-claim", "claim", "w7", "r2", 0, 0, {}, 13.0, plan="plan-2")])
    assert chunk(ledger, "r2", 0)["owner"] == "w7"
    v1 = fold(base + [Event("v1-claim", "claim", "w6", "r2", 0, 0, {}, 11.0)])
    assert chunk(v1, "r2", 0)["owner"] == "w6"
    before = fold([plan_event(), Event("c", "claim", "w5", "r1", 0, 0, {}, 1.0, plan="plan-1")])
    assert chunk(before)["owner"] == "w5"


def test_what_a_journal_writes_after_a_sync_names_the_plan_in_force():
    store = MemoryStore()
    journal = Journal(store, "j")
    store.put_bytes(paths.event_key("j", plan_event().id), plan_event().to_bytes())
    ledger = Ledger.open(None)
    assert journal.append("leave", "w1").plan is None  # no plan known yet
    ledger.sync(journal)
    event = journal.append("claim", "w1", "r1", 0, 0)
    assert event.plan == "plan-1"
    data, _ = store.get_with_stat(paths.bucket_event_key("j", paths.bucket_start(event.server_time), event.id))
    assert Event.from_bytes(data, 1.0).plan == "plan-1"

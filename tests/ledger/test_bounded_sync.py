"""Outcome: a sync costs what is new (issue 13, defect 8). The journal's hour buckets, the sync
cursor, the base a refold starts from, pruned ledgers and snapshots, the flat v1 folder, and the
writer whose clock is hours off — on real stores with the injected clock, no sleeping."""

from __future__ import annotations

import json
import sqlite3

import pytest
import sqlite_utils

from shardrun import paths
from shardrun.clock import FakeClock
from shardrun.journal import LAG_S, MISPLACED, SKEW_S, Event, Journal
from shardrun.ledger.db import Ledger, LedgerSettings
from shardrun.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from shardrun.storage.local import LocalStore
from shardrun.storage.memory import MemoryStore
from tests.lagging_store import LaggingStore
from tests.ledger.test_db import plan_event

T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z
HOUR = 3600.0


class CountingStore(MemoryStore):
    """A memory store that records what it was asked: the folders listed and the objects read."""

    def __init__(self, clock):
        super().__init__(clock=clock)
        self.listed: list[str] = []
        self.reads = 0

    def _list_folder(self, prefix):
        self.listed.append(prefix)
        return super()._list_folder(prefix)

    def get_with_stat(self, key):
        self.reads += 1
        return super().get_with_stat(key)

    def forget(self):
        self.listed, self.reads = [], 0


def bucket_listings(store: CountingStore) -> list[str]:
    return [p for p in store.listed if paths.bucket_of_key("j", p + "x.json") is not None]


def job(clock=None, store=None):
    clock = clock or FakeClock(T0)
    store = store if store is not None else CountingStore(clock)
    journal = Journal(store, "j", clock)
    journal.append("plan", "planner", payload=plan_event().payload)
    return clock, store, journal


def work(clock, journal, hours: float, every_s: float = 600.0, ledgers=(), sync_every_s: float = HOUR):
    """Writes heartbeats (and a checkpoint every sixth) of worker w1 on r1's chunk 0 for `hours`,
    syncing `ledgers` every `sync_every_s`."""
    if not any(e for e in [getattr(journal, "_claimed", False)]):
        journal.append("claim", "w1", "r1", 0, 0)
        journal._claimed = True
    elapsed = since_sync = 0.0
    step = getattr(journal, "_step", 0)
    while elapsed < hours * HOUR:
        clock.advance(every_s)
        elapsed += every_s
        since_sync += every_s
        step = min(step + 1, 99)
        if step % 6 == 0:
            journal.append("checkpoint", "w1", "r1", 0, 0, {"step": step, "key": f"ck{step}", "md5": "m",
                                                             "loss": 1.0 / step})
        else:
            journal.append("heartbeat", "w1", "r1", 0, 0, {"step": step, "loss": 1.0 / step})
        if since_sync >= sync_every_s:
            since_sync = 0.0
            for ledger in ledgers:
                ledger.sync(journal)
    journal._step = step


def fresh_fold(journal) -> Ledger:
    """What a reader folding the whole journal from nothing has (nothing dropped)."""
    ledger = Ledger.open(None, LedgerSettings(prune=False))
    ledger.add_events(*journal.read(journal.keys()))
    return ledger


def same(a: Ledger, b: Ledger) -> None:
    assert a.dump() == b.dump()
    assert a.bad_events() == b.bad_events()
    assert a.event_count() == b.event_count()


# -- the layout -----------------------------------------------------------------------------------


def test_events_go_to_the_hour_bucket_of_the_store_time():
    clock = FakeClock(T0 + 5 * HOUR + 10)  # 2024-06-01T05:00:10Z
    store = MemoryStore(clock=clock)
    event = Journal(store, "j", clock).append("leave", "w1")
    assert store.list_keys("j/") == [f"j/journal/v2/2024-06/01T05/{event.id}.json"]
    assert paths.bucket_of_key("j", store.list_keys("j/")[0]) == T0 + 5 * HOUR
    assert paths.bucket_of_key("j", paths.event_key("j", event.id)) is None  # a flat v1 key


def test_a_writer_whose_clock_is_hours_off_writes_its_first_event_again_in_the_right_bucket():
    clock = FakeClock(T0)
    store = MemoryStore(clock=clock)
    journal = Journal(store, "j", FakeClock(T0 - 5 * HOUR))  # this machine's clock: 5 h behind the store's
    plan = journal.append("plan", "planner", payload=plan_event().payload)
    misplaced = f"j/journal/v2/2024-05/31T19/{plan.id}.json"
    assert store.list_keys("j/") == [misplaced, f"j/journal/v2/2024-06/01T00/{plan.id}.json"]
    leave = journal.append("leave", "planner")  # the store's time is known now: placed right at once
    assert len(store.list_keys("j/")) == 3 and int(leave.id[:16], 16) / 1e6 == pytest.approx(T0)
    events, bad = journal.read([misplaced])
    assert events == [] and bad[0][1].startswith(MISPLACED) and "5 h behind" in bad[0][1]
    reader = Ledger.open(None)
    reader.sync(journal)
    # The misplaced copy counts for no reader, not even as a bad event: a bounded reader might
    # never list its bucket. The event is the copy in the right bucket.
    assert reader.plan()["server_time"] == plan.server_time
    assert reader.bad_events() == [] and reader.event_count() == 2
    same(reader, fresh_fold(journal))


def test_a_writer_behind_places_its_first_event_by_the_store_time_its_last_sync_saw():
    clock, store, journal = job()
    clock.advance(3 * HOUR)
    journal.append("leave", "someone")
    late = Journal(store, "j", FakeClock(T0 - 10 * HOUR))
    Ledger.open(None).sync(late)  # the sync tells the journal the newest store time it saw
    before = len(store.list_keys("j/"))
    late.append("leave", "w2")
    assert len(store.list_keys("j/")) == before + 1  # one write: no misplaced copy


# -- the cursor -----------------------------------------------------------------------------------


def test_a_sync_lists_only_the_buckets_after_its_cursor_whatever_the_journal_holds(tmp_path):
    clock, store, journal = job()
    ledger = Ledger.open(tmp_path / "ledger.db")
    work(clock, journal, hours=72, ledgers=[ledger])  # three days, a sync every hour
    assert len(Journal(store, "j").buckets(None)) == 73
    store.forget()
    clock.advance(120)
    journal.append("heartbeat", "w1", "r1", 0, 0, {"step": 99})
    result = ledger.sync(journal)
    assert result.new_events == 1 and store.reads == 1  # only the new event is read
    # The v2 folder, this month's folder and the buckets from the cursor less the 2 h window:
    # the same few listings on day 3 as on day 1.
    assert len(bucket_listings(store)) <= 4
    assert len(store.listed) <= 6
    cursor = ledger.sync_state()["cursor"]
    assert cursor is not None and clock.now() - cursor < 2 * HOUR
    same(ledger, fresh_fold(journal))


def test_events_hidden_by_a_lagging_listing_and_placed_by_clocks_behind_are_all_folded(tmp_path):
    clock = FakeClock(T0)
    store = MemoryStore(clock=clock)
    Journal(store, "j", clock).append("plan", "planner", payload=plan_event().payload)
    view = LaggingStore(store, max_lag_s=LAG_S - 60, min_lag_s=LAG_S - 900, seed=3, now=clock.now)
    reader = Ledger.open(tmp_path / "reader.db")
    reading = Journal(view, "j", clock)
    for i in range(200):  # 16 hours: an event every 5 min, a sync after each
        clock.advance(300)
        # Each event from a fresh writer whose clock is 55 min behind the store's: placed in an
        # earlier bucket than its store time's, by its own clock (within the skew it may be off).
        writer = Journal(store, "j", FakeClock(clock.now() - SKEW_S + 300))
        writer.append("heartbeat", f"w{i % 3}", "r1", 0, 0, {"step": i % 100})
        reader.sync(reading)
    assert view.hidden > 0
    assert len({paths.bucket_of_key("j", k) for k in store.list_keys("j/journal/v2/")}) == 17
    clock.advance(LAG_S)
    reader.sync(reading)
    reader.sync(reading)
    same(reader, fresh_fold(Journal(store, "j", clock)))


# -- the base, pruning, the rebuild -----------------------------------------------------------------


def test_a_late_event_refolds_from_the_base_and_the_ledger_keeps_only_the_events_after_it(tmp_path):
    clock, store, journal = job()
    ledger = Ledger.open(tmp_path / "ledger.db")
    work(clock, journal, hours=30, ledgers=[ledger])
    state = ledger.sync_state()
    assert state["base"] is not None and state["pruned"]
    total = ledger.event_count()
    kept = ledger.db.execute("SELECT COUNT(*), MIN(server_time) FROM events").fetchone()
    assert kept[0] < total / 2 and kept[1] > state["base"][0]  # what a refold can read: after the base
    assert state["cursor"] - state["base"][0] >= LedgerSettings().base_lag_s
    # A claim by w2 that surfaces late (between the base and the last event applied) refolds from
    # the base and ends where a fold of everything from scratch ends.
    late_time = ledger.latest_time() - 3 * HOUR
    late = Event("%016x-late-claim" % int(late_time * 1e6), "expire", "w2", "r1", 0, 0, {}, late_time, plan="plan-1")
    result = ledger.add_events([late])
    assert result.refolded and not result.rebuild
    reference = fresh_fold(journal)
    reference.add_events([late])
    same(ledger, reference)


def test_an_event_older_than_the_base_makes_a_pruned_ledger_rebuild_from_the_journal(tmp_path):
    clock, store, journal = job()
    ledger = Ledger.open(tmp_path / "ledger.db")
    work(clock, journal, hours=30, ledgers=[ledger])
    # An event in a bucket long closed (written there at its store time: well placed), which a
    # bounded sync never lists; a reader that meets it all the same needs the dropped events.
    now = clock.now()
    clock.advance(-24 * HOUR)
    old = Journal(store, "j", clock).append("leave", "w9")
    clock.advance(24 * HOUR)
    assert clock.now() == now
    result = ledger.add_events([old])
    assert result.rebuild and not result.refolded
    assert ledger.sync(journal).refolded  # the rebuild: the whole journal, folded afresh
    assert not ledger.sync_state()["rebuild"]
    same(ledger, fresh_fold(journal))
    assert ledger.worker("w9") is not None


def test_without_pruning_an_event_before_the_base_refolds_from_scratch():
    ledger = Ledger.open(None, LedgerSettings(prune=False))
    events = [plan_event(), *(Event(f"e{i:03d}", "heartbeat", "w1", "r1", 0, 0, {"step": i}, float(i))
                              for i in range(1, 50))]
    ledger.add_events(events)
    assert ledger.advance_base(30.0) and ledger.sync_state()["base"] == (30.0, "e030")
    claim = Event("c", "claim", "w1", "r1", 0, 0, {}, 0.5)
    assert ledger.add_events([claim]).refolded
    assert ledger.sync_state()["base"] is None  # dropped: made again at the next move
    expected = Ledger.open(None)
    expected.add_events(events + [claim])
    same(ledger, expected)


# -- snapshots ----------------------------------------------------------------------------------


def test_a_snapshot_holds_the_base_and_the_events_after_it_and_a_new_worker_syncs_only_what_is_new(tmp_path):
    clock, store, journal = job()
    ledger = Ledger.open(tmp_path / "ledger.db")
    work(clock, journal, hours=30, ledgers=[ledger])
    ledger.publish(store, "j")
    snapshot = tmp_path / "snapshot.db"
    snapshot.write_bytes(store.get_bytes(paths.ledger_snapshot_key("j")))
    with sqlite3.connect(snapshot) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert not any(t.startswith("base_") for t in tables)  # the base is the snapshot's own tables
    assert events == ledger.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    clock.advance(120)
    journal.append("heartbeat", "w1", "r1", 0, 0, {"step": 99})
    store.forget()
    newcomer = Ledger.from_snapshot(store, "j", tmp_path / "new.db")
    result = newcomer.sync(journal)
    assert result.new_events == 1 and store.reads == 1 and len(bucket_listings(store)) <= 4
    assert newcomer.sync_state()["base"] == ledger.sync_state()["base"]
    ledger.sync(journal)
    same(newcomer, ledger)
    same(newcomer, fresh_fold(journal))


def test_publish_if_stale_publishes_only_when_the_snapshot_is_older_than_the_interval(tmp_path):
    clock, store, journal = job()
    ledger = Ledger.open(tmp_path / "ledger.db")
    ledger.sync(journal)
    assert ledger.publish_if_stale(store, "j", 1800)  # none yet
    work(clock, journal, hours=0.3, ledgers=[ledger], sync_every_s=600)
    assert not ledger.publish_if_stale(store, "j", 1800)  # 20 min of store time old
    work(clock, journal, hours=0.2, ledgers=[ledger], sync_every_s=600)
    assert ledger.publish_if_stale(store, "j", 1800)
    assert store.stat(paths.ledger_snapshot_key("j")).mtime == clock.now()


# -- the flat v1 folder ---------------------------------------------------------------------------


def flat_write(store, clock, event_id, kind="heartbeat", step=1):
    body = Event(event_id, kind, "old-worker", "r1", 0, 0, {"step": step}, plan="plan-1").to_bytes()
    return store.put_bytes(paths.event_key("j", event_id), body)


def test_the_flat_folder_is_read_while_an_older_writer_may_use_it_and_every_three_hours_after(tmp_path):
    clock = FakeClock(T0)
    store = CountingStore(clock)
    store.put_bytes(paths.event_key("j", plan_event().id), plan_event().to_bytes())  # written by shardrun v1
    flat_write(store, clock, "%016x-old-claim" % int(T0 * 1e6), kind="claim")
    journal = Journal(store, "j", clock)
    ledger = Ledger.open(tmp_path / "ledger.db")
    ledger.sync(journal)
    assert ledger.chunk("r1", 0)["owner"] == "old-worker"
    flat = paths.journal_prefix("j")
    clock.advance(HOUR)
    flat_write(store, clock, "%016x-old-hb" % int(clock.now() * 1e6))  # the old writer is still at work
    journal.append("leave", "new-worker")
    store.forget()
    ledger.sync(journal)
    assert flat in store.listed and ledger.chunk("r1", 0)["step_reached"] == 1
    # A day without a flat event: the flat folder is listed once every three hours, no more.
    work(clock, journal, hours=25, ledgers=[ledger])
    revived = "%016x-revived" % int(clock.now() * 1e6)
    flat_write(store, clock, revived, kind="leave")
    looks = reads = syncs = 0
    while not ledger.db.execute("SELECT 1 FROM events WHERE id = ?", [revived]).fetchone():
        clock.advance(600)  # syncs every 10 min
        journal.append("leave", "new-worker")
        store.forget()
        ledger.sync(journal)
        looks += flat in store.listed
        reads += store.reads
        syncs += 1
    assert syncs <= 18 and looks == 1  # found within three hours, by the one look in them
    assert reads == syncs + 1  # the new events and the revived one: no rebuild read the journal again
    assert not ledger.sync_state()["rebuild"]
    clock.advance(600)
    store.forget()
    ledger.sync(journal)
    assert flat in store.listed  # an older writer is at work again: listed at every sync
    assert ledger.db.execute("SELECT 1 FROM events WHERE id = ?", [revived]).fetchone()  # after the base
    same(ledger, fresh_fold(journal))


# -- migrating an older ledger ------------------------------------------------------------------------


def test_a_ledger_of_schema_4_is_migrated_in_place_and_reads_no_flat_event_twice(tmp_path):
    clock = FakeClock(T0)
    store = CountingStore(clock)
    old_events = []
    for event in [plan_event(time=T0), Event("%016x-c" % int(T0 * 1e6 + 1), "claim", "w1", "r1", 0, 0, {}),
                  Event("%016x-k" % int(T0 * 1e6 + 2), "checkpoint", "w1", "r1", 0, 0,
                        {"step": 50, "key": "ck50", "md5": "m",
                         "validation": {"psnr": 30.0, "ssim": 0.9, "bicubic_psnr": 28.0, "bicubic_ssim": 0.8}})]:
        stat = store.put_bytes(paths.event_key("j", event.id), event.to_bytes())
        old_events.append(Event(event.id, event.kind, event.worker, event.run, event.chunk, event.generation,
                                event.payload, stat.mtime))
        clock.advance(1)
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    for migration in MIGRATIONS[:4]:  # the ledger an older shardrun wrote (schema 4)
        migration(db)
    db.execute("PRAGMA user_version = 4")
    db.execute("DELETE FROM fold_state WHERE name = 'refold'")
    for e in old_events:
        db["events"].insert({"id": e.id, "server_time": e.server_time, "kind": e.kind, "worker": e.worker,
                             "run": e.run, "chunk": e.chunk, "generation": e.generation,
                             "payload": json.dumps(e.payload)})
    db.execute("UPDATE fold_state SET value = '3' WHERE name = 'event_count'")
    db.conn.commit()
    db.close()
    ledger = Ledger.open(path)
    assert ledger.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10
    assert ledger.seen_time() == old_events[-1].server_time
    assert {i for (i,) in ledger.db.execute("SELECT id FROM flat_ids")} == {e.id for e in old_events}
    assert json.loads(ledger.checkpoints("r1")[0]["validation"])["psnr"] == 30.0
    clock.advance(60)
    journal = Journal(store, "j", clock)
    journal.append("heartbeat", "w1", "r1", 0, 0, {"step": 60})
    store.forget()
    assert ledger.sync(journal).new_events == 1 and store.reads == 1  # the flat events are known
    same(ledger, fresh_fold(journal))


def test_the_bucketed_journal_on_a_local_store(tmp_path):
    store = LocalStore(tmp_path / "home")
    journal = Journal(store, "j")
    journal.append("plan", "planner", payload=plan_event().payload)
    event = journal.append("claim", "w1", "r1", 0, 0)
    bucket = paths.bucket_start(event.server_time)
    assert (tmp_path / "home" / paths.bucket_event_key("j", bucket, event.id)).is_file()
    ledger = Ledger.open(tmp_path / "ledger.db")
    ledger.sync(journal)
    assert ledger.chunk("r1", 0)["owner"] == "w1"
    assert abs(journal.offset) < 5  # one machine: its clock sets the folder's times
    assert SKEW_S == HOUR


def test_a_rebuild_reads_what_a_sync_can_list_and_no_folder_copied_in_beside_it():
    clock = FakeClock(T0)
    store = MemoryStore(clock=clock)
    journal = Journal(store, "j", clock)
    journal.append("plan", "planner", payload=plan_event().payload)
    claim = journal.append("claim", "w1", "r1", 0, 0)
    # A stray copy of the journal (a user's backup) nested under journal/, holding a rival claim.
    rival = Event("0" * 16 + "-rival", "claim", "w2", "r1", 0, 0, {}, plan=claim.plan)
    store.put_bytes(f"j/journal/backup/{rival.id}.json", rival.to_bytes())
    synced, rebuilt = Ledger.open(None), Ledger.open(None)
    synced.sync(journal)
    rebuilt.rebuild(journal)
    assert len(journal.keys()) == 2 and all("/backup/" not in k for k in journal.keys())
    assert rebuilt.dump() == synced.dump() and synced.chunk("r1", 0)["owner"] == "w1"


def test_a_rebuild_keeps_the_events_this_ledger_folded_that_the_listing_does_not_show_yet():
    clock = FakeClock(T0)
    inner = MemoryStore(clock=clock)
    journal = Journal(inner, "j", clock)
    journal.append("plan", "planner", payload=plan_event().payload)
    # This worker's own claim, folded at once, is hidden from its listings for a while.
    own = Journal(LaggingStore(inner, 600, min_lag_s=600, lag_own_writes=True, now=clock.now), "j", clock)
    clock.advance(700)  # the plan is listed by now
    ledger = Ledger.open(None)
    ledger.sync(own)
    assert ledger.plan() is not None
    claim = own.append("claim", "w1", "r1", 0, 0)
    ledger.add_events([Event.from_bytes(claim.to_bytes(), claim.server_time)])
    assert not [k for k in own.keys() if claim.id in k]  # hidden from its own listings
    ledger.rebuild(own)
    assert ledger.chunk("r1", 0)["owner"] == "w1"
    clock.advance(700)  # once listed, a fresh reader agrees
    fresh = Ledger.open(None)
    fresh.sync(journal)
    assert fresh.dump() == ledger.dump()

"""The ledger: a local SQLite projection of the journal, and the queries status and workers use.

The fold is a pure function of the *set* of events: events are applied in (server time, id)
order, so folding the same events twice, or receiving them in any order, gives the same ledger.
New events that sort after everything already applied are folded incrementally; an event that
surfaces late (Drive listings lag) and sorts earlier triggers a refold, which keeps the result
identical to a fold from scratch.

What a sync and a refold cost is bounded, not the job's age (docs/worker.md, "The journal's
layout"):
- A sync lists only the journal's hour buckets from its **cursor** on (less the window of listing
  lag and writer skew), and reads only the events it does not know.
- A refold starts from the **base**: a copy of the derived tables (`base_<table>`) at a fold point
  hours behind the cursor, which moves forward as the job goes (by replaying the events between
  the old point and the new one onto it). Every event a bounded sync can still find sorts after
  the base, so the ledger drops the events the base holds: the ledger and its published snapshot
  stay bounded too. A snapshot holds the base's tables and the events after it; the ledger opened
  from it makes its own base and replays those events.
- Should an event sort before the base all the same (a writer outside the journal's tolerances,
  or a ledger built by an older shardrun, whose migrations refold), a ledger that dropped events
  rebuilds from the whole journal: correct, and costly, once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import sqlite_utils

from shardrun import paths
from shardrun.config.job import init_run_of
from shardrun.ledger import schema as ledger_schema
from shardrun.errors import LedgerError
from shardrun.ledger.schema import CHUNK_STATES, DERIVED_TABLES
from shardrun.journal import LAG_S, MISPLACED, SKEW_S, WINDOW_S, Event, Journal
from shardrun.errors import NotFound
from shardrun.storage.base import Store
from shardrun.ledger.fold import Fold

log = logging.getLogger("shardrun.ledger")

EVENT_COLUMNS = "id, kind, worker, run, chunk, generation, payload, server_time, plan"
BASE = "base_"  # the base's copy of derived table T is base_T
SWAP = "cur_"  # where the current tables wait while the base is moved forward


def _event_of(row) -> Event:
    return Event(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7], row[8])


def migrate(db: sqlite_utils.Database) -> int:
    """Brings the ledger's schema up to date (see ledger_schema); returns its version before."""
    return ledger_schema.migrate(db, lambda d: Ledger(d, None)._migration_refold())


@dataclass(frozen=True)
class LedgerSettings:
    """How a ledger bounds its syncs and refolds, in store time (docs/worker.md).

    window_s: a sync lists the buckets that end after its cursor minus this (listing lag + skew).
    base_lag_s: the base stays at least this far behind the cursor, so every event a sync can
        still find sorts after it: the window, a bucket and the skew, with two hours to spare.
    base_every_s: how far the base moves at a time; a refold replays at most about
        base_lag_s + base_every_s of events (what the ledger keeps).
    prune: drop the events the base holds (False keeps them: tests of the fold use it).
    flat_alive_s, flat_recheck_s: the flat v1 folder is listed at a ledger's first sync, at every
        sync while its newest object is younger than flat_alive_s (a writer of an earlier
        shardrun may still be at work), and otherwise once every flat_recheck_s: soon enough that
        what a writer of an earlier shardrun wrote there still sorts after the base (base_lag_s
        exceeds the listing lag and flat_recheck_s), so it refolds from the base.
    """

    window_s: float = WINDOW_S
    base_lag_s: float = WINDOW_S + paths.BUCKET_SECONDS + SKEW_S + 2 * 3600
    base_every_s: float = 6 * 3600.0
    prune: bool = True
    flat_alive_s: float = 24 * 3600.0
    flat_recheck_s: float = 3 * 3600.0

    def __post_init__(self):
        if self.prune and self.base_lag_s < max(self.window_s + paths.BUCKET_SECONDS + SKEW_S,
                                                LAG_S + self.flat_recheck_s):
            raise ValueError(f"a ledger's base must stay behind everything a sync can still find: base_lag_s "
                             f"{self.base_lag_s:g} s is too short for window_s {self.window_s:g} s and "
                             f"flat_recheck_s {self.flat_recheck_s:g} s")


@dataclass(frozen=True)
class SyncResult:
    new_events: int
    bad_events: int
    refolded: bool
    rebuild: bool = False  # the ledger needs a rebuild from the journal (sync does it at once)


def _renamed(sql: str, old: str, new: str) -> str:
    """Returns a table's or index's CREATE statement for a copy named `new` (indexes: on `new`'s table)."""
    name = r'(\[[^\]]+\]|"[^"]+"|`[^`]+`|\w+)'
    m = re.match(rf"\s*CREATE\s+(UNIQUE\s+)?(TABLE|INDEX)\s+{name}", sql, re.I)
    if not m:
        raise LedgerError(f"cannot copy the ledger's table {old}: unexpected schema {sql[:60]!r}")
    if m[2].upper() == "TABLE":
        return f"CREATE TABLE [{new}]" + sql[m.end():]
    rest = re.sub(rf"^\s+ON\s+{name}", f" ON [{new}]", sql[m.end():], count=1, flags=re.I)
    index = m[3].strip('[]"`')
    return f"CREATE {m[1] or ''}INDEX [{BASE}{index}]" + rest


class Ledger:
    """A job's ledger file. Open with `Ledger.open(path)`; sync with `sync(journal)`."""

    def __init__(self, db: sqlite_utils.Database, path: Path | None, settings: LedgerSettings | None = None):
        self.db = db
        self.path = path
        self.settings = settings or LedgerSettings()

    @classmethod
    def open(cls, path: str | os.PathLike | None, settings: LedgerSettings | None = None) -> "Ledger":
        """Returns the ledger at `path` (created and migrated as needed; None: in memory)."""
        try:
            if path is None:
                db = sqlite_utils.Database(sqlite3.connect(":memory:", check_same_thread=False,
                                                           isolation_level=None))
            else:
                path = Path(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                # Several workers on one machine may share the file: SQLite's lock serialises
                # their folds (see add_events), and a connection may move to a worker thread.
                conn = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
                db = sqlite_utils.Database(conn)
                db.execute("PRAGMA journal_mode = WAL")
            migrate(db)
            ledger = cls(db, Path(path) if path else None, settings)
            ledger._finish_snapshot()
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"{path}: not a usable ledger database ({e})") from e
        return ledger

    def close(self) -> None:
        self.db.close()

    # -- the fold's state --

    def _state(self, name: str):
        row = self.db.conn.execute("SELECT value FROM fold_state WHERE name = ?", (name,)).fetchone()
        return None if row is None or row[0] is None else json.loads(row[0])

    def _set_state(self, name: str, value) -> None:
        if value is None:
            self.db.conn.execute("DELETE FROM fold_state WHERE name = ?", (name,))
        else:
            self.db.conn.execute("INSERT OR REPLACE INTO fold_state (name, value) VALUES (?, ?)",
                                 (name, json.dumps(value)))

    def _last_applied(self) -> tuple[float, str] | None:
        last = self._state("last_applied")
        return tuple(last) if last else None

    def _base_point(self) -> tuple[float, str] | None:
        base = self._state("base_point")
        return tuple(base) if base else None

    def seen_time(self) -> float | None:
        """Returns the store time of the newest event this ledger has stored (None: none yet)."""
        return self._state("seen_time")

    def sync_state(self) -> dict:
        """Returns where the ledger's syncs stand: the cursor, the newest store time seen, the base's
        point, whether it dropped the events before it, and the flat folder's last look."""
        return {"cursor": self._state("cursor"), "seen_time": self.seen_time(), "base": self._base_point(),
                "pruned": bool(self._state("pruned")), "rebuild": bool(self._state("rebuild")),
                "flat_checked": self._state("flat_checked"), "flat_latest": self._state("flat_latest")}

    def known_keys(self) -> set[str]:
        """Returns the ids of events folded, and the keys of journal objects found not to be events."""
        keys = {key for (key,) in self.db.execute("SELECT id FROM events")}
        keys.update(key for (key,) in self.db.execute("SELECT key FROM bad_events"))
        keys.update(key for (key,) in self.db.execute("SELECT id FROM flat_ids"))
        keys.update(key for (key,) in self.db.execute("SELECT key FROM misplaced"))
        return keys

    def unknown_keys(self, keys: Iterable[str]) -> list[str]:
        """Returns the journal keys (or event ids) that are neither folded events nor known bad objects
        (nor events of the flat folder seen before, whose rows the ledger may have dropped).

        A listing about as long as the ledger is checked against every known id at once (one
        scan); a short one (a sync's few buckets beside a ledger of millions of events) is looked
        up key by key through the primary keys, so it costs as much as the listing, not the ledger.
        """
        keys = list(keys)
        if len(keys) * 20 >= self.event_count():
            known = self.known_keys()
            return [k for k in keys if paths.event_id_of(k) not in known and k not in known]
        conn = self.db.conn
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS probe (key TEXT PRIMARY KEY, id TEXT)")
        conn.execute("DELETE FROM temp.probe")
        conn.executemany("INSERT OR IGNORE INTO temp.probe (key, id) VALUES (?, ?)",
                         ((k, paths.event_id_of(k)) for k in keys))
        unknown = [k for (k,) in conn.execute(
            "SELECT key FROM temp.probe p WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = p.id) "
            "AND NOT EXISTS (SELECT 1 FROM bad_events b WHERE b.key = p.key OR b.key = p.id) "
            "AND NOT EXISTS (SELECT 1 FROM flat_ids f WHERE f.id = p.id) "
            "AND NOT EXISTS (SELECT 1 FROM misplaced m WHERE m.key = p.key) "
            "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = p.key) ORDER BY key")]
        conn.execute("DELETE FROM temp.probe")
        return unknown

    # -- folding --

    def add_events(self, events: Iterable[Event], bad: Iterable[tuple[str, str]] = (),
                   known: set[str] | None = None) -> SyncResult:
        """Stores events not seen before and folds them; returns what changed.

        The fold is total: a malformed event (Event.problem) goes to bad_events with its reason,
        never into a failed sync. Of two copies of one event id (a retried create whose first
        answer was lost, Drive's own duplicates) every reader keeps the same one, whatever it saw
        first: the earliest store time, then the smaller bytes (Event.copy_rank); a reader that
        folded a later copy and meets an earlier one refolds. A refold starts from the base when
        everything that changed sorts after it, else from scratch; a ledger that dropped the events
        before its base marks itself for a rebuild from the journal instead (Ledger.sync).
        """
        bad = list(bad)
        misplaced = [(k, r) for k, r in bad if r.startswith(MISPLACED)]
        bad = [(k, r) for k, r in bad if not r.startswith(MISPLACED)]
        copies: dict[str, Event] = {}
        for e in events:
            reason = e.problem()
            if reason:
                bad.append((e.id if isinstance(e.id, str) and e.id else repr(e.id), f"malformed event: {reason}"))
            elif (known is None or e.id not in known) and (
                    e.id not in copies or e.copy_rank() < copies[e.id].copy_rank()):
                copies[e.id] = e
        candidates = sorted(copies.values(), key=lambda e: e.order)
        conn = self.db.conn
        with self._write_transaction():
            stored = self._stored_copies([e.id for e in candidates])
            fresh, replaced, changed = [], [], []
            for e in candidates:
                row = (e.server_time, e.kind, e.worker, e.run, e.chunk, e.generation,
                       json.dumps(e.payload, sort_keys=True), e.plan, e.id)
                old = stored.get(e.id)
                if old is None:
                    conn.execute("INSERT INTO events (server_time, kind, worker, run, chunk, generation, payload, "
                                 "plan, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                    fresh.append(e)
                    changed.append(e.order)
                elif e.copy_rank() < old.copy_rank():
                    conn.execute("UPDATE events SET server_time = ?, kind = ?, worker = ?, run = ?, chunk = ?, "
                                 "generation = ?, payload = ?, plan = ? WHERE id = ?", row)
                    replaced.append(e)
                    changed += [e.order, old.order]
                if known is not None:
                    known.add(e.id)
            for e in fresh:  # a good copy outranks a malformed one under the same id
                self._forget_bad(e.id)
            conn.executemany("INSERT OR IGNORE INTO misplaced (key, reason) VALUES (?, ?)", misplaced)
            good_ids = set(self._stored_copies([paths.event_id_of(k) for k, _ in bad]))
            conn.executemany("INSERT OR IGNORE INTO bad_events (key, reason) VALUES (?, ?)",
                             [(k, r) for k, r in bad if paths.event_id_of(k) not in good_ids])
            if fresh:
                conn.execute("UPDATE fold_state SET value = CAST(value AS INTEGER) + ? WHERE name = 'event_count'",
                             (len(fresh),))
            if fresh or replaced:
                newest = max(e.server_time for e in fresh + replaced)
                seen = self.seen_time()
                if seen is None or newest > seen:
                    self._set_state("seen_time", newest)
            last = self._last_applied()
            refold = rebuild = False
            if self._state("rebuild"):
                rebuild = True  # already due: the events stored wait for it
            elif replaced or (fresh and last is not None and fresh[0].order < last):
                if self._refold_after(min(changed)):
                    refold = True
                else:
                    self._set_state("rebuild", 1)
                    rebuild = True
            elif fresh:
                fold = Fold(conn)
                for event in fresh:
                    self._apply(fold, event)
                self._set_last(fresh[-1].order)
        return SyncResult(len(fresh), len(bad), refold, rebuild)

    def _stored_copies(self, ids: list[str]) -> dict[str, Event]:
        """Returns the stored copy of each of `ids` that the events table holds."""
        found: dict[str, Event] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for row in self.db.conn.execute(
                    f"SELECT {EVENT_COLUMNS} FROM events WHERE id IN ({', '.join('?' * len(part))})", part):
                found[row[0]] = _event_of(row)
        return found

    def _forget_bad(self, event_id: str) -> None:
        suffix = f"/{event_id}.json"
        self.db.conn.execute("DELETE FROM bad_events WHERE key = ? OR substr(key, -?) = ?",
                             (event_id, len(suffix), suffix))

    def _apply(self, fold: Fold, event: Event) -> None:
        """Applies one event; one the fold cannot apply is moved to bad_events, never failing the sync."""
        conn = self.db.conn
        conn.execute("SAVEPOINT fold_event")
        try:
            fold.apply(event)
        except Exception as e:  # a shape Event.problem did not foresee: the fold stays total
            conn.execute("ROLLBACK TO fold_event")
            conn.execute("RELEASE fold_event")
            row = conn.execute("SELECT id FROM plan").fetchone()
            fold.plan_id = row[0] if row else None
            fold.summary.forget_runs()
            conn.execute("DELETE FROM events WHERE id = ?", (event.id,))
            conn.execute("UPDATE fold_state SET value = CAST(value AS INTEGER) - 1 WHERE name = 'event_count'")
            conn.execute("INSERT OR REPLACE INTO bad_events (key, reason) VALUES (?, ?)",
                         (event.id, f"the fold could not apply it ({type(e).__name__}: {e})"))
            return
        conn.execute("RELEASE fold_event")

    def _set_last(self, order: tuple[float, str]) -> None:
        self._set_state("last_applied", list(order))

    def _fold_rows(self, after: tuple[float, str] | None, up_to: tuple[float, str] | None = None
                   ) -> tuple[float, str] | None:
        """Applies the stored events after `after` (all: None), up to `up_to`, in order, to the
        derived tables as they stand; returns the last one's order."""
        conn = self.db.conn
        where, args = [], []
        if after is not None:
            where.append("(server_time, id) > (?, ?)")
            args += list(after)
        if up_to is not None:
            where.append("(server_time, id) <= (?, ?)")
            args += list(up_to)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        fold = Fold(conn)
        last = None
        for row in conn.execute(f"SELECT {EVENT_COLUMNS} FROM events {clause}ORDER BY server_time, id",
                                args).fetchall():
            event = _event_of(row)
            reason = event.problem()  # checked as strictly as a new event (ledgers of older versions)
            if reason:
                conn.execute("DELETE FROM events WHERE id = ?", (event.id,))
                conn.execute("UPDATE fold_state SET value = CAST(value AS INTEGER) - 1 WHERE name = 'event_count'")
                conn.execute("INSERT OR REPLACE INTO bad_events (key, reason) VALUES (?, ?)",
                             (event.id, f"malformed event: {reason}"))
                continue
            self._apply(fold, event)
            last = event.order
        return last

    def _refold(self) -> None:
        """Refolds the derived tables from scratch, from every stored event (the base is dropped)."""
        self._drop_base()
        for table in DERIVED_TABLES:
            self.db.conn.execute(f"DELETE FROM {table}")
        last = self._fold_rows(None)
        if last is not None:
            self._set_last(last)

    def _refold_from_base(self) -> None:
        """Puts the base's tables back and replays the events after its point."""
        conn = self.db.conn
        base = self._base_point()
        for table in DERIVED_TABLES:
            conn.execute(f"DELETE FROM {table}")
            conn.execute(f"INSERT INTO {table} SELECT * FROM {BASE}{table}")
        self._set_last(self._fold_rows(base) or base)

    def _refold_after(self, point: tuple[float, str]) -> bool:
        """Refolds so that what changed at `point` counts; returns False where that needs events
        this ledger dropped (it sorts before the base)."""
        base = self._base_point()
        if base is not None and point > base:
            self._refold_from_base()
            return True
        if self._state("pruned"):
            return False
        self._refold()
        return True

    def _migration_refold(self) -> None:
        """A migration changed what the fold writes: refold from scratch, or mark a ledger that
        dropped events for a rebuild from the journal (its next sync)."""
        if self._state("pruned"):
            self._drop_base()
            self._set_state("rebuild", 1)
        else:
            self._refold()

    # -- the base --

    def _make_base_tables(self, copy: bool) -> None:
        """Creates base_T beside every derived table T, same columns, keys and indexes; empty, or a copy."""
        conn = self.db.conn
        for table in DERIVED_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {BASE}{table}")
            (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                                  (table,)).fetchone()
            conn.execute(_renamed(sql, table, BASE + table))
            for (index,) in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                                         "AND sql IS NOT NULL", (table,)).fetchall():
                conn.execute(_renamed(index, table, BASE + table))
            if copy:
                conn.execute(f"INSERT INTO {BASE}{table} SELECT * FROM {table}")

    def _drop_base(self) -> None:
        for table in DERIVED_TABLES:
            self.db.conn.execute(f"DROP TABLE IF EXISTS {BASE}{table}")
        self._set_state("base_point", None)

    def advance_base(self, before: float) -> bool:
        """Moves the base forward to the newest stored event at or before store time `before`, if
        that is base_every_s past the base's point (or there is no base yet), by replaying the
        events between onto it; then drops the events it now holds (settings.prune). Returns
        whether it moved. Ledger.sync calls it with its cursor less base_lag_s."""
        with self._write_transaction():
            return self._advance_base(before)

    def _advance_base(self, before: float) -> bool:
        conn = self.db.conn
        if self._state("rebuild") or self._state("replay"):
            return False
        row = conn.execute("SELECT server_time, id FROM events WHERE server_time <= ? "
                           "ORDER BY server_time DESC, id DESC LIMIT 1", (before,)).fetchone()
        last = self._last_applied()
        if row is None or last is None:
            return False
        target = (row[0], row[1])
        base = self._base_point()
        if target > last or (base is not None and (target <= base or target[0] - base[0] < self.settings.base_every_s)):
            return False
        if base is None:
            self._make_base_tables(copy=False)
        # The fold writes the tables by their names: the base takes them while it is moved forward.
        for table in DERIVED_TABLES:
            conn.execute(f"ALTER TABLE {table} RENAME TO {SWAP}{table}")
            conn.execute(f"ALTER TABLE {BASE}{table} RENAME TO {table}")
        self._fold_rows(base, target)
        for table in DERIVED_TABLES:
            conn.execute(f"ALTER TABLE {table} RENAME TO {BASE}{table}")
            conn.execute(f"ALTER TABLE {SWAP}{table} RENAME TO {table}")
        self._set_state("base_point", list(target))
        if self.settings.prune:
            conn.execute("DELETE FROM events WHERE (server_time, id) <= (?, ?)", target)
            self._set_state("pruned", 1)
        return True

    def _finish_snapshot(self) -> None:
        """A ledger opened from a published snapshot holds the base's tables and the events after
        it: make its own base of them and replay the events (once, whoever opens it first)."""
        if not self._state("replay"):
            return
        with self._write_transaction():
            if self._state("replay"):
                self._make_base_tables(copy=True)
                base = self._base_point()
                self._set_last(self._fold_rows(base) or base)
                self._set_state("replay", None)

    @contextmanager
    def _write_transaction(self):
        """One write transaction, or the one already open. BEGIN IMMEDIATE takes the write lock
        first: another process folding the same journal into the same file waits, and whatever it
        inserted meanwhile is not applied twice."""
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- syncing --

    def sync(self, journal: Journal) -> SyncResult:
        """Reads the journal's new events (only those not yet known, in the buckets the cursor has
        not closed) and folds them; returns what changed.

        Where the store may hold two copies of one key (Drive), the listing's store times also
        show when an earlier copy of a known event has surfaced: it is read and refolded.
        """
        result = self.rebuild(journal) if self._state("rebuild") else self._sync(journal)
        # What the journal's writer writes next names the plan now in force.
        plan = self.plan()
        journal.plan = plan["id"] if plan else None
        journal.store_time_hint = self.seen_time()
        return result

    def _started(self, journal: Journal) -> float | None:
        # A store time known to have passed before this sync lists anything: the cursor it leaves.
        known = [t for t in (self.seen_time(), journal.last_write_time) if t is not None]
        return max(known) if known else None

    def _sync(self, journal: Journal) -> SyncResult:
        started = self._started(journal)
        cursor = self._state("cursor")
        listed = journal.listing(None if cursor is None else cursor - self.settings.window_s)
        flat = journal.flat_listing() if self._flat_due(journal) else None
        every = {**listed, **(flat or {})}
        keys = self.unknown_keys(list(every))
        if journal.store.duplicate_copies:
            unknown = set(keys)
            keys += [k for k in self._earlier_copies(every) if k not in unknown]
        result = self.add_events(*journal.read(keys))
        if result.rebuild:
            return self.rebuild(journal)
        with self._write_transaction():
            if flat is not None:
                self._remember_flat(flat, journal.store_now())
            if started is not None:
                cursor = started if cursor is None else max(cursor, started)
                self._set_state("cursor", cursor)
            if cursor is not None:
                self._advance_base(cursor - self.settings.base_lag_s)
        return result

    def _flat_due(self, journal: Journal) -> bool:
        checked = self._state("flat_checked")
        if checked is None:
            return True
        # When to look goes by the newest store time seen, or by this reader's estimate of the
        # store's time now where that is later (a journal gone quiet); it decides only when the
        # flat folder is listed, never what is folded.
        now = max(self.seen_time() or checked, journal.store_now())
        latest = self._state("flat_latest")
        if latest is not None and now - latest < self.settings.flat_alive_s:
            return True  # a writer of an earlier shardrun may still write there
        return now - checked >= self.settings.flat_recheck_s

    def _remember_flat(self, flat: dict[str, float], now: float) -> None:
        self.db.conn.executemany("INSERT OR IGNORE INTO flat_ids (id) VALUES (?)",
                                 [(paths.event_id_of(k),) for k in flat])
        self._set_state("flat_checked", max(self.seen_time() or now, now))
        latest = max(flat.values(), default=None)
        known = self._state("flat_latest")
        if latest is not None and (known is None or latest > known):
            self._set_state("flat_latest", latest)

    def rebuild(self, journal: Journal) -> SyncResult:
        """Folds the ledger afresh from every event in the journal (a walk of all of it): what a
        ledger that dropped old events does when one of them would be needed."""
        started = self._started(journal)
        log.warning("the ledger is rebuilt from the whole journal of %s (an event sorted before its base)",
                    journal.job)
        keys = journal.keys()
        events, bad = journal.read(keys)
        # What this ledger folded that the listing does not show yet stays (a worker's own latest
        # events, behind Drive's lag): every event here was read from the store or written by it.
        listed = {e.id for e in events}
        events += [e for e in map(_event_of, self.db.execute(f"SELECT {EVENT_COLUMNS} FROM events"))
                   if e.id not in listed]
        flat_prefix = paths.journal_prefix(journal.job)
        flat = {k for k in keys if "/" not in k[len(flat_prefix):]}
        conn = self.db.conn
        with self._write_transaction():
            self._drop_base()
            for table in ("events", "bad_events", "flat_ids", "misplaced", *DERIVED_TABLES):
                conn.execute(f"DELETE FROM {table}")
            conn.execute("DELETE FROM fold_state")
            conn.execute("INSERT INTO fold_state (name, value) VALUES ('event_count', '0')")
            result = self.add_events(events, bad)
            conn.executemany("INSERT OR IGNORE INTO flat_ids (id) VALUES (?)", [(paths.event_id_of(k),) for k in flat])
            self._set_state("flat_checked", max(self.seen_time() or 0.0, journal.store_now()))
            flat_times = [e.server_time for e in events if paths.event_key(journal.job, e.id) in flat]
            if flat_times:
                self._set_state("flat_latest", max(flat_times))
            if started is not None:
                self._set_state("cursor", started)
                self._advance_base(started - self.settings.base_lag_s)
        return SyncResult(result.new_events, result.bad_events, True)

    def _earlier_copies(self, listed: dict[str, float | None]) -> list[str]:
        """Returns the listed keys of known events whose listed copy is older than the one folded."""
        rows = [(paths.event_id_of(k), k, t) for k, t in listed.items() if t is not None]
        if not rows:
            return []
        conn = self.db.conn
        # By key: one event id may be listed under two keys (a misplaced first copy and the one
        # its writer wrote again); the misplaced one is never read again.
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS listed_copies (key TEXT PRIMARY KEY, id TEXT, t REAL)")
        conn.execute("DELETE FROM temp.listed_copies")
        conn.executemany("INSERT OR REPLACE INTO temp.listed_copies (id, key, t) VALUES (?, ?, ?)", rows)
        earlier = [k for (k,) in conn.execute(
            "SELECT l.key FROM temp.listed_copies l JOIN events e ON e.id = l.id WHERE l.t < e.server_time "
            "AND NOT EXISTS (SELECT 1 FROM misplaced m WHERE m.key = l.key) ORDER BY l.key")]
        conn.execute("DELETE FROM temp.listed_copies")
        return earlier

    # -- snapshots --

    def publish(self, store: Store, job: str) -> None:
        """Uploads a consistent copy of the ledger so status and new workers start fast.

        Where the ledger has a base, the copy holds the base's tables and the events after its
        point (not both the tables and their base): about the size of the derived tables, whatever
        the job's age. The ledger opened from it replays those events (_finish_snapshot).
        """
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "snapshot.db"
            self.db.execute("VACUUM INTO ?", [str(copy)])
            conn = sqlite3.connect(copy, isolation_level=None)
            try:
                row = conn.execute("SELECT value FROM fold_state WHERE name = 'base_point'").fetchone()
                if row is not None:
                    base = json.loads(row[0])
                    conn.execute("BEGIN")
                    for table in DERIVED_TABLES:
                        conn.execute(f"DELETE FROM {table}")
                        conn.execute(f"INSERT INTO {table} SELECT * FROM {BASE}{table}")
                        conn.execute(f"DROP TABLE {BASE}{table}")
                    conn.execute("DELETE FROM events WHERE (server_time, id) <= (?, ?)", base)
                    conn.executemany("INSERT OR REPLACE INTO fold_state (name, value) VALUES (?, ?)",
                                     [("last_applied", json.dumps(base)), ("pruned", "1"), ("replay", "1")])
                    conn.execute("COMMIT")
                    conn.execute("VACUUM")
            finally:
                conn.close()
            store.put_file(paths.ledger_snapshot_key(job), copy)

    def publish_if_stale(self, store: Store, job: str, max_age_s: float) -> bool:
        """Publishes the snapshot if the store's is missing or older than `max_age_s` behind the
        newest event this ledger has seen (store time against store time); returns whether it did."""
        seen = self.seen_time()
        if seen is None or self._state("rebuild"):
            return False
        try:
            published = store.stat(paths.ledger_snapshot_key(job)).mtime
        except NotFound:
            published = None
        if published is not None and seen - published < max_age_s:
            return False
        self.publish(store, job)
        return True

    @classmethod
    def from_snapshot(cls, store: Store, job: str, path: Path, settings: LedgerSettings | None = None) -> "Ledger":
        """Returns the local ledger at `path`, seeded from the store's snapshot if it has none."""
        if not path.exists():
            try:
                store.download(paths.ledger_snapshot_key(job), path)
            except NotFound:
                pass  # no snapshot yet: start empty and fold the journal
        return cls.open(path, settings)

    # -- queries --

    def dump(self) -> dict[str, list[tuple]]:
        """Returns every derived table's rows in a canonical order (tests compare ledgers so)."""
        return {t: sorted(tuple(r) for r in self.db.execute(f"SELECT * FROM {t}").fetchall())
                for t in DERIVED_TABLES}

    def plan(self) -> dict | None:
        rows = list(self.db["plan"].rows)
        return rows[0] if rows else None

    def collaborative(self, run: str) -> dict | None:
        """Returns the plan's record of a collaborative run (its rounds and each replica's part:
        plan/parts.collaborative_record), or None for a plain run or no plan."""
        plan = self.plan()
        if plan is None:
            return None
        return (json.loads(plan["payload"] or "{}").get("collaborative") or {}).get(run)

    def rounds(self, run: str) -> list[dict]:
        """Returns a collaborative run's rounds in order (empty for a plain run)."""
        return list(self.db.query("SELECT * FROM rounds WHERE run = ? ORDER BY round", [run]))

    def finished(self) -> bool:
        """True when the plan's work is all done: every plain chunk, and every collaborative run's
        last round (its outer step accepted; a unit a round closed without is dropped, not owed)."""
        chunks = self.db.execute("SELECT COUNT(*), SUM(state IN ('done', 'dropped')) FROM chunks").fetchone()
        rounds = self.db.execute("SELECT COUNT(*), SUM(state = 'done') FROM rounds").fetchone()
        return bool(chunks[0]) and chunks[0] == chunks[1] and (rounds[1] or 0) == rounds[0]

    def run_finished(self, run: str) -> bool:
        """True when `run` has trained to its end: every chunk of a plain run done, or the last round
        of a collaborative run stepped."""
        chunks = self.db.execute("SELECT COUNT(*), SUM(state IN ('done', 'dropped')), MAX(round IS NOT NULL) "
                                 "FROM chunks WHERE run = ?", [run]).fetchone()
        if not chunks[0]:
            return False
        if chunks[2]:
            last = self.db.execute("SELECT state FROM rounds WHERE run = ? ORDER BY round DESC LIMIT 1",
                                   [run]).fetchone()
            return last is not None and last[0] == "done"
        return chunks[0] == chunks[1]

    def final_network(self, run: str) -> dict | None:
        """Returns the key and md5 of `run`'s final network once it has finished: a plain run's
        checkpoint at its last step, a collaborative run's last global checkpoint; else None."""
        if not self.run_finished(run):
            return None
        last = self.db.execute("SELECT checkpoint_key, checkpoint_md5 FROM rounds WHERE run = ? "
                               "ORDER BY round DESC LIMIT 1", [run]).fetchone()
        if last is not None:
            return {"key": last[0], "md5": last[1]} if last[0] else None
        row, accepted = self.run(run), self.checkpoints(run)
        if accepted and accepted[0]["step"] == row["steps_total"]:
            return {"key": accepted[0]["key"], "md5": accepted[0]["md5"]}
        return None

    def waits_for(self, run: str) -> str | None:
        """Returns the run whose final network `run` starts from (init = "run:NAME") while that run
        has not finished, else None: until then no worker starts `run`."""
        row = self.run(run)
        source = init_run_of(json.loads(row["config"]).get("init")) if row else None
        return None if source is None or self.run_finished(source) else source

    def runs(self) -> list[dict]:
        return list(self.db.query(
            "SELECT r.*, "
            " COALESCE(SUM(CASE WHEN c.state = 'done' THEN c.end_step - c.start_step "
            "                   ELSE c.step_reached - c.start_step END), 0) AS steps_done "
            "FROM runs r LEFT JOIN chunks c ON c.run = r.name GROUP BY r.name ORDER BY r.position"))

    def chunk_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for run, state, n in self.db.execute("SELECT run, state, COUNT(*) FROM chunks GROUP BY run, state"):
            counts.setdefault(run, dict.fromkeys(CHUNK_STATES, 0))[state] = n
        return counts

    def chunks(self, run: str | None = None, state: str | None = None) -> list[dict]:
        conditions = [(c, v) for c, v in (("run = ?", run), ("state = ?", state)) if v is not None]
        where = ("WHERE " + " AND ".join(c for c, _ in conditions)) if conditions else ""
        return list(self.db.query(f"SELECT * FROM chunks {where} ORDER BY run, idx", [v for _, v in conditions]))

    def chunk(self, run: str, idx: int) -> dict | None:
        rows = list(self.db.query("SELECT * FROM chunks WHERE run = ? AND idx = ?", [run, idx]))
        return rows[0] if rows else None

    def checkpoints(self, run: str, up_to_step: int | None = None) -> list[dict]:
        """Returns the run's accepted checkpoints, newest (highest step) first."""
        limit = "" if up_to_step is None else "AND step <= ?"
        args = [run] if up_to_step is None else [run, up_to_step]
        return list(self.db.query(
            f"SELECT * FROM checkpoints WHERE run = ? {limit} ORDER BY step DESC, server_time DESC", args))

    def run(self, name: str) -> dict | None:
        return next((r for r in self.runs() if r["name"] == name), None)

    def accounts(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM accounts ORDER BY position"))

    def shards(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM shards ORDER BY account, id"))

    def rejected(self) -> list[dict]:
        return list(self.db.query("SELECT path, reason FROM rejected ORDER BY path"))

    def bad_events(self) -> list[dict]:
        return list(self.db.query("SELECT key, reason FROM bad_events ORDER BY key"))

    def event_count(self) -> int:
        """Returns the number of events folded (kept as a counter: counting millions of rows is slow)."""
        row = self.db.execute("SELECT value FROM fold_state WHERE name = 'event_count'").fetchone()
        return int(row[0]) if row else self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    # -- summaries for status (bounded tables: see summaries.py) --

    def latest_time(self) -> float | None:
        """Returns the store time of the latest event folded (None: no event yet)."""
        last = self._last_applied()
        return None if last is None else last[0]

    def run_metrics(self) -> dict[str, dict]:
        return {row["run"]: row for row in self.db.query("SELECT * FROM run_metrics")}

    def validation_scores(self, run: str, step: int | None = None) -> list[dict]:
        """Returns the per-image validation scores of a run at `step` (default: its latest validation)."""
        if step is None:
            row = self.db.execute("SELECT MAX(step) FROM validation_scores WHERE run = ?", [run]).fetchone()
            step = row[0] if row else None
        return list(self.db.query("SELECT * FROM validation_scores WHERE run = ? AND step = ? ORDER BY image",
                                  [run, step]))

    def history(self, run: str) -> list[dict]:
        """Returns the run's downsampled history, one row per step bucket, in step order."""
        return list(self.db.query("SELECT * FROM run_history WHERE run = ? ORDER BY bucket", [run]))

    def workers(self, seen_since: float | None = None) -> list[dict]:
        """Returns the workers (one per worker process) last seen at or after `seen_since`, latest first."""
        where, args = ("WHERE last_time >= ?", [seen_since]) if seen_since is not None else ("", [])
        return list(self.db.query(f"SELECT * FROM workers {where} ORDER BY last_time DESC, id", args))

    def worker(self, worker_id: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM workers WHERE id = ?", [worker_id]))
        return rows[0] if rows else None

    def sessions(self) -> list[dict]:
        """Returns every worker process's first and last event (its session), in start order."""
        return list(self.db.query(
            "SELECT id, account, platform, device, first_time, last_time, last_kind, claims, chunks_done, yields, "
            "fails, expired, left_reason FROM workers ORDER BY first_time, id"))

    def hardware(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM hardware ORDER BY device, platform, run"))

    def attempt_totals(self) -> dict[str, dict]:
        """Returns per outcome of ended chunk attempts: their number, their seconds from claim to end,
        and the seconds since their last checkpoint (what an expiry loses)."""
        return {row["outcome"]: row for row in self.db.query(
            "SELECT outcome, COUNT(*) AS attempts, SUM(end_time - claim_time) AS seconds, "
            " SUM(end_time - COALESCE(checkpoint_time, claim_time)) AS since_checkpoint "
            "FROM attempts WHERE outcome IS NOT NULL GROUP BY outcome")}

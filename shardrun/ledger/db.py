"""The ledger: a local SQLite projection of the journal, and the queries status and workers use.

The fold is a pure function of the *set* of events: events are applied in (server time, id)
order, so folding the same events twice, or receiving them in any order, gives the same ledger.
New events that sort after everything already applied are folded incrementally; an event that
surfaces late (Drive listings lag) and sorts earlier triggers a refold of the derived tables
from the stored events, which keeps the result identical to a fold from scratch.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import sqlite_utils

from shardrun import paths
from shardrun.ledger import schema as ledger_schema
from shardrun.errors import LedgerError
from shardrun.ledger.schema import CHUNK_STATES, DERIVED_TABLES
from shardrun.journal import Event, Journal
from shardrun.errors import NotFound
from shardrun.storage.base import Store
from shardrun.ledger.fold import Fold

EVENT_COLUMNS = "id, kind, worker, run, chunk, generation, payload, server_time, plan"


def _event_of(row) -> Event:
    return Event(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7], row[8])


def migrate(db: sqlite_utils.Database) -> int:
    """Brings the ledger's schema up to date (see ledger_schema); returns its version before."""
    return ledger_schema.migrate(db, lambda d: Ledger(d, None)._refold())


# -- the fold ------------------------------------------------------------------------------------


# -- the ledger ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncResult:
    new_events: int
    bad_events: int
    refolded: bool


class Ledger:
    """A job's ledger file. Open with `Ledger.open(path)`; sync with `sync(journal)`."""

    def __init__(self, db: sqlite_utils.Database, path: Path | None):
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike | None) -> "Ledger":
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
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"{path}: not a usable ledger database ({e})") from e
        return cls(db, Path(path) if path else None)

    def close(self) -> None:
        self.db.close()

    # -- folding --

    def _last_applied(self) -> tuple[float, str] | None:
        row = self.db.execute("SELECT value FROM fold_state WHERE name = 'last_applied'").fetchone()
        return tuple(json.loads(row[0])) if row else None

    def known_keys(self) -> set[str]:
        """Returns the ids of events folded, and the keys of journal objects found not to be events."""
        keys = {key for (key,) in self.db.execute("SELECT id FROM events")}
        keys.update(key for (key,) in self.db.execute("SELECT key FROM bad_events"))
        return keys

    def unknown_keys(self, keys: Iterable[str]) -> list[str]:
        """Returns the journal keys (or event ids) that are neither folded events nor known bad objects.

        A listing about as long as the ledger is checked against every known id at once (one
        scan); a short one (a compacted journal beside a ledger of millions of events) is looked
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
            "AND NOT EXISTS (SELECT 1 FROM bad_events b WHERE b.key = p.key) "
            "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = p.key) ORDER BY key")]
        conn.execute("DELETE FROM temp.probe")
        return unknown

    def add_events(self, events: Iterable[Event], bad: Iterable[tuple[str, str]] = (),
                   known: set[str] | None = None) -> SyncResult:
        """Stores events not seen before and folds them; returns what changed.

        The fold is total: a malformed event (Event.problem) goes to bad_events with its reason,
        never into a failed sync. Of two copies of one event id (a retried create whose first
        answer was lost, Drive's own duplicates) every reader keeps the same one, whatever it saw
        first: the earliest store time, then the smaller bytes (Event.copy_rank); a reader that
        folded a later copy and meets an earlier one refolds.
        """
        bad = list(bad)
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
        # BEGIN IMMEDIATE takes the write lock first: another process folding the same journal
        # into the same file waits, and whatever it inserted meanwhile is not applied twice.
        in_transaction = conn.in_transaction
        if not in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        try:
            stored = self._stored_copies([e.id for e in candidates])
            fresh, replaced = [], []
            for e in candidates:
                row = (e.server_time, e.kind, e.worker, e.run, e.chunk, e.generation,
                       json.dumps(e.payload, sort_keys=True), e.plan, e.id)
                old = stored.get(e.id)
                if old is None:
                    conn.execute("INSERT INTO events (server_time, kind, worker, run, chunk, generation, payload, "
                                 "plan, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                    fresh.append(e)
                elif e.copy_rank() < old.copy_rank():
                    conn.execute("UPDATE events SET server_time = ?, kind = ?, worker = ?, run = ?, chunk = ?, "
                                 "generation = ?, payload = ?, plan = ? WHERE id = ?", row)
                    replaced.append(e)
                if known is not None:
                    known.add(e.id)
            for e in fresh:  # a good copy outranks a malformed one under the same id
                self._forget_bad(e.id)
            good_ids = set(self._stored_copies([paths.event_id_of(k) for k, _ in bad]))
            conn.executemany("INSERT OR IGNORE INTO bad_events (key, reason) VALUES (?, ?)",
                             [(k, r) for k, r in bad if paths.event_id_of(k) not in good_ids])
            if fresh:
                conn.execute("UPDATE fold_state SET value = CAST(value AS INTEGER) + ? WHERE name = 'event_count'",
                             (len(fresh),))
            last = self._last_applied()
            refold = bool(replaced) or (bool(fresh) and last is not None and fresh[0].order < last)
            if refold:
                self._refold()
            elif fresh:
                fold = Fold(conn)
                for event in fresh:
                    self._apply(fold, event)
                self._set_last(fresh[-1].order)
            if not in_transaction:
                conn.execute("COMMIT")
        except BaseException:
            if not in_transaction:
                conn.execute("ROLLBACK")
            raise
        return SyncResult(len(fresh), len(bad), refold)

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
        self.db.conn.execute("INSERT OR REPLACE INTO fold_state (name, value) VALUES ('last_applied', ?)",
                             (json.dumps(list(order)),))

    def _refold(self) -> None:
        for table in DERIVED_TABLES:
            self.db.conn.execute(f"DELETE FROM {table}")
        fold = Fold(self.db.conn)
        last = None
        for row in self.db.conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events ORDER BY server_time, id").fetchall():
            event = _event_of(row)
            reason = event.problem()  # checked as strictly as a new event (ledgers of older versions)
            if reason:
                self.db.conn.execute("DELETE FROM events WHERE id = ?", (event.id,))
                self.db.conn.execute("UPDATE fold_state SET value = CAST(value AS INTEGER) - 1 "
                                     "WHERE name = 'event_count'")
                self.db.conn.execute("INSERT OR REPLACE INTO bad_events (key, reason) VALUES (?, ?)",
                                     (event.id, f"malformed event: {reason}"))
                continue
            self._apply(fold, event)
            last = event.order
        if last is not None:
            self._set_last(last)

    def sync(self, journal: Journal) -> SyncResult:
        """Reads the journal's new events (only those not yet known) and folds them; returns what changed.

        Where the store may hold two copies of one key (Drive), the listing's store times also
        show when an earlier copy of a known event has surfaced: it is read and refolded.
        """
        listed = journal.listing()
        keys = list(listed)
        result = self.add_events(*journal.read(self.unknown_keys(keys) + self._earlier_copies(listed)))
        # -- journal v2 hook: what the journal's writer writes next names the plan now in force.
        plan = self.plan()
        journal.plan = plan["id"] if plan else None
        return result

    def _earlier_copies(self, listed: dict[str, float | None]) -> list[str]:
        """Returns the listed keys of known events whose listed copy is older than the one folded."""
        rows = [(paths.event_id_of(k), k, t) for k, t in listed.items() if t is not None]
        if not rows:
            return []
        conn = self.db.conn
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS listed (id TEXT PRIMARY KEY, key TEXT, t REAL)")
        conn.execute("DELETE FROM temp.listed")
        conn.executemany("INSERT OR REPLACE INTO temp.listed (id, key, t) VALUES (?, ?, ?)", rows)
        earlier = [k for (k,) in conn.execute(
            "SELECT l.key FROM temp.listed l JOIN events e ON e.id = l.id WHERE l.t < e.server_time ORDER BY l.key")]
        conn.execute("DELETE FROM temp.listed")
        return earlier

    # -- snapshots --

    def publish(self, store: Store, job: str) -> None:
        """Uploads a consistent copy of the ledger so status and new workers start fast."""
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "snapshot.db"
            self.db.execute("VACUUM INTO ?", [str(copy)])
            store.put_file(paths.ledger_snapshot_key(job), copy)

    @classmethod
    def from_snapshot(cls, store: Store, job: str, path: Path) -> "Ledger":
        """Returns the local ledger at `path`, seeded from the store's snapshot if it has none."""
        if not path.exists():
            try:
                store.download(paths.ledger_snapshot_key(job), path)
            except NotFound:
                pass  # no snapshot yet: start empty and fold the journal
        return cls.open(path)

    # -- queries --

    def dump(self) -> dict[str, list[tuple]]:
        """Returns every derived table's rows in a canonical order (tests compare ledgers so)."""
        return {t: sorted(tuple(r) for r in self.db.execute(f"SELECT * FROM {t}").fetchall())
                for t in DERIVED_TABLES}

    def plan(self) -> dict | None:
        rows = list(self.db["plan"].rows)
        return rows[0] if rows else None

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

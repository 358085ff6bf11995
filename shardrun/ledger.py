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
from typing import Any, Iterable

import sqlite_utils

from shardrun import ledger_schema, paths
from shardrun.errors import LedgerError
from shardrun.ledger_schema import CHUNK_STATES, DERIVED_TABLES, MIGRATIONS, SCHEMA_VERSION  # noqa: F401
from shardrun.journal import Event, Journal
from shardrun.storage import NotFound, Store
from shardrun.summaries import Summaries

def migrate(db: sqlite_utils.Database) -> int:
    """Brings the ledger's schema up to date (see ledger_schema); returns its version before."""
    return ledger_schema.migrate(db, lambda d: Ledger(d, None)._refold())


# -- the fold ------------------------------------------------------------------------------------


def _plan_tables(event: Event) -> dict[str, list[dict[str, Any]]]:
    """Returns the rows a plan event puts in the derived tables."""
    p = event.payload
    rows: dict[str, list[dict]] = {
        "plan": [{"id": p["plan_id"], "job": p["job"], "fingerprint": p["fingerprint"],
                  "server_time": event.server_time, "images": p["images"],
                  "image_bytes": p["image_bytes"], "rejected": len(p.get("rejected", [])),
                  "manifest_key": p["manifest_key"], "manifest_md5": p["manifest_md5"],
                  "platform": p["platform"], "profile": p["profile"],
                  "lease_seconds": p["lease_seconds"],
                  "payload": json.dumps({k: p[k] for k in ("estimate",) if k in p})}],
        "accounts": [], "shards": [], "runs": [], "chunks": [], "rejected": [],
    }
    for i, a in enumerate(p["accounts"]):
        rows["accounts"].append({"name": a["name"], "position": i, "store": a["store"],
                                 "quota_bytes": a["quota_bytes"], "reserve_bytes": a["reserve_bytes"],
                                 "placed_bytes": 0, "shards": 0})
    placed = {a["name"]: a for a in rows["accounts"]}
    for s in p["shards"]:
        rows["shards"].append({"id": s["id"], "account": s["account"], "key": s["key"],
                               "size": s["size"], "md5": s["md5"], "images": s["images"]})
        placed[s["account"]]["placed_bytes"] += s["size"]
        placed[s["account"]]["shards"] += 1
    for i, r in enumerate(p["runs"]):
        rows["runs"].append({"name": r["name"], "position": i, "model": r["model"], "scale": r["scale"],
                             "channels": r["channels"], "epochs": r["epochs"],
                             "batch_size": r["batch_size"], "patch_size": r["patch_size"],
                             "steps_per_epoch": r["steps_per_epoch"], "steps_total": r["steps_total"],
                             "step_seconds": r["step_seconds"], "config": json.dumps(r["config"], sort_keys=True)})
        for idx, (start, end) in enumerate(r["chunks"]):
            rows["chunks"].append({"run": r["name"], "idx": idx, "start_step": start, "end_step": end,
                                   "state": "ready" if idx == 0 else "waiting", "generation": 0,
                                   "owner": None, "claim_time": None, "heartbeat_time": None,
                                   "step_reached": start, "checkpoint_key": None, "checkpoint_md5": None,
                                   "start_checkpoint_key": None, "start_checkpoint_md5": None,
                                   "attempts": 0, "last_error": None, "done_time": None})
    for r in p.get("rejected", []):
        rows["rejected"].append({"path": r["path"], "reason": r["reason"]})
    return rows


class Fold:
    """Applies events to the derived tables of one open connection, one event at a time."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.summary = Summaries(conn)

    def apply(self, event: Event) -> None:
        if event.kind != "plan" and event.worker:
            self.summary.seen(event)
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(event)

    def _chunk(self, event: Event) -> dict | None:
        if event.run is None or event.chunk is None:
            return None
        cur = self.conn.execute("SELECT * FROM chunks WHERE run = ? AND idx = ?", (event.run, event.chunk))
        row = cur.fetchone()
        return dict(zip([c[0] for c in cur.description], row)) if row else None

    def _owned(self, event: Event) -> dict | None:
        """Returns the chunk if `event` comes from its current owner in its current generation.

        This is the fencing rule: a late or duplicate worker's events are ignored.
        """
        chunk = self._chunk(event)
        if (chunk and chunk["state"] == "running" and chunk["owner"] == event.worker
                and chunk["generation"] == event.generation):
            return chunk
        return None

    def _update(self, chunk: dict, **changes) -> None:
        sets = ", ".join(f"{k} = ?" for k in changes)
        self.conn.execute(f"UPDATE chunks SET {sets} WHERE run = ? AND idx = ?",
                          (*changes.values(), chunk["run"], chunk["idx"]))

    def _on_plan(self, event: Event) -> None:
        current = self.conn.execute("SELECT id FROM plan").fetchone()
        if current and current[0] == event.payload.get("plan_id"):
            return  # the same plan written again (a re-run of `plan`)
        if current and event.payload.get("replaces") != current[0]:
            return  # a stale plan that does not knowingly supersede the current one
        for table in DERIVED_TABLES:
            self.conn.execute(f"DELETE FROM {table}")
        self.summary.forget_runs()
        for table, rows in _plan_tables(event).items():
            if rows:
                cols = list(rows[0])
                self.conn.executemany(
                    f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [tuple(r[c] for c in cols) for r in rows])

    def _on_claim(self, event: Event) -> None:
        chunk = self._chunk(event)
        if chunk and chunk["state"] == "ready" and chunk["generation"] == event.generation:
            self._update(chunk, state="running", owner=event.worker, claim_time=event.server_time,
                         heartbeat_time=event.server_time, attempts=chunk["attempts"] + 1)
            self.summary.claimed(event, {**chunk, "generation": event.generation})

    def _on_heartbeat(self, event: Event) -> None:
        if chunk := self._owned(event):
            step = max(chunk["step_reached"], int(event.payload.get("step", chunk["step_reached"])))
            self._update(chunk, heartbeat_time=event.server_time, step_reached=min(step, chunk["end_step"]))
            reported = event.payload.get("step")
            if isinstance(reported, int) and chunk["start_step"] <= reported <= chunk["end_step"]:
                self.summary.progress(event, chunk, reported, checkpoint=False)

    def _on_checkpoint(self, event: Event) -> None:
        chunk = self._owned(event)
        step, key = event.payload.get("step"), event.payload.get("key")
        if chunk and isinstance(step, int) and isinstance(key, str) and chunk["start_step"] <= step <= chunk["end_step"]:
            self._update(chunk, heartbeat_time=event.server_time, step_reached=max(step, chunk["step_reached"]),
                         checkpoint_key=key, checkpoint_md5=event.payload.get("md5"))
            self._record_checkpoint(chunk, event, step)
            self.summary.progress(event, chunk, step, checkpoint=True)

    def _record_checkpoint(self, chunk: dict, event: Event, step: int) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO checkpoints (run, step, key, md5, chunk, generation, worker, server_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (chunk["run"], step, event.payload["key"], event.payload.get("md5"), chunk["idx"],
             chunk["generation"], event.worker, event.server_time))

    def _release(self, chunk: dict, event: Event, error: str | None) -> None:
        """Returns a running chunk to ready at the next generation, resuming from its checkpoint."""
        self._update(chunk, state="ready", generation=chunk["generation"] + 1, owner=None,
                     claim_time=None, last_error=error)

    def _on_yield(self, event: Event) -> None:
        if chunk := self._owned(event):
            if event.payload.get("key"):
                self._on_checkpoint(event)
                chunk = self._chunk(event)
            self.summary.ended(event, chunk, "yield")
            self._release(chunk, event, event.payload.get("reason"))

    def _on_fail(self, event: Event) -> None:
        if chunk := self._owned(event):
            self.summary.ended(event, chunk, "fail")
            self._release(chunk, event, str(event.payload.get("reason", "failed")))

    def _on_expire(self, event: Event) -> None:
        # Any worker may declare a lease expired; it counts only if, in the store's own time, the
        # owner had been silent for the lease time when the expiry was written.
        chunk = self._chunk(event)
        plan = self.conn.execute("SELECT lease_seconds FROM plan").fetchone()
        if (chunk and plan and chunk["state"] == "running" and chunk["generation"] == event.generation
                and event.server_time - chunk["heartbeat_time"] >= plan[0]):
            self.summary.ended(event, chunk, "expired")
            self._release(chunk, event, f"lease expired (owner {chunk['owner']} silent)")

    def _on_leave(self, event: Event) -> None:
        self.summary.left(event)

    def _on_done(self, event: Event) -> None:
        chunk = self._owned(event)
        if not chunk or not event.payload.get("key"):
            return
        self._update(chunk, state="done", step_reached=chunk["end_step"], done_time=event.server_time,
                     checkpoint_key=event.payload["key"], checkpoint_md5=event.payload.get("md5"))
        self._record_checkpoint(chunk, event, chunk["end_step"])
        self.summary.progress(event, chunk, chunk["end_step"], checkpoint=True)
        self.summary.ended(event, chunk, "done")
        nxt = self.conn.execute("SELECT idx FROM chunks WHERE run = ? AND idx = ? AND state = 'waiting'",
                                (chunk["run"], chunk["idx"] + 1)).fetchone()
        if nxt:
            self.conn.execute(
                "UPDATE chunks SET state = 'ready', start_checkpoint_key = ?, start_checkpoint_md5 = ? "
                "WHERE run = ? AND idx = ?",
                (event.payload["key"], event.payload.get("md5"), chunk["run"], chunk["idx"] + 1))


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
        """Stores events not seen before and folds them; returns what changed."""
        events = sorted(events, key=lambda e: e.order)
        bad = list(bad)
        if known is None:
            fresh_ids = set(self.unknown_keys(e.id for e in events))
            candidates = [e for e in events if e.id in fresh_ids]
        else:
            candidates = [e for e in events if e.id not in known]
        conn = self.db.conn
        # BEGIN IMMEDIATE takes the write lock first: another process folding the same journal
        # into the same file waits, and whatever it inserted meanwhile is not applied twice.
        in_transaction = conn.in_transaction
        if not in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        try:
            fresh = []
            for e in candidates:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO events (id, server_time, kind, worker, run, chunk, generation, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.id, e.server_time, e.kind, e.worker, e.run, e.chunk, e.generation,
                     json.dumps(e.payload, sort_keys=True)))
                if cursor.rowcount == 1:
                    fresh.append(e)
                if known is not None:
                    known.add(e.id)
            conn.executemany("INSERT OR IGNORE INTO bad_events (key, reason) VALUES (?, ?)", bad)
            if fresh:
                conn.execute("UPDATE fold_state SET value = CAST(value AS INTEGER) + ? WHERE name = 'event_count'",
                             (len(fresh),))
            last = self._last_applied()
            refold = bool(fresh) and last is not None and fresh[0].order < last
            if refold:
                self._refold()
            elif fresh:
                fold = Fold(conn)
                for event in fresh:
                    fold.apply(event)
                self._set_last(fresh[-1].order)
            if not in_transaction:
                conn.execute("COMMIT")
        except BaseException:
            if not in_transaction:
                conn.execute("ROLLBACK")
            raise
        return SyncResult(len(fresh), len(bad), refold)

    def _set_last(self, order: tuple[float, str]) -> None:
        self.db.conn.execute("INSERT OR REPLACE INTO fold_state (name, value) VALUES ('last_applied', ?)",
                             (json.dumps(list(order)),))

    def _refold(self) -> None:
        for table in DERIVED_TABLES:
            self.db.conn.execute(f"DELETE FROM {table}")
        fold = Fold(self.db.conn)
        last = None
        for row in self.db.conn.execute(
                "SELECT id, kind, worker, run, chunk, generation, payload, server_time FROM events "
                "ORDER BY server_time, id").fetchall():
            event = Event(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7])
            fold.apply(event)
            last = event.order
        if last is not None:
            self._set_last(last)

    def sync(self, journal: Journal) -> SyncResult:
        """Reads the journal's new events (only those not yet known) and folds them."""
        events, bad = journal.read(self.unknown_keys(journal.keys()))
        return self.add_events(events, bad)

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

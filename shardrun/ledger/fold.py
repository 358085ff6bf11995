"""The fold: how each event changes the ledger's derived tables (a pure function of the events
in (server time, id) order; shardrun.ledger.db decides which events to apply and when to refold).

Every event names the plan its writer knew (journal v2); an event of another plan than the one
in force is ignored, so a worker that has not yet seen a new plan cannot claim, heartbeat or
finish against it. An event without a plan (journal v1) belongs to the plan in force at its
time. A replacing plan keeps the progress of every run it leaves unchanged (same data, same
training settings, same chunks: `unchanged_runs`) and starts the others over.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from shardrun.journal import Event
from shardrun.ledger.schema import DERIVED_TABLES

# Derived tables holding one run's progress: what a replacing plan keeps for an unchanged run.
RUN_TABLES = {"chunks": "run", "checkpoints": "run", "run_metrics": "run", "run_history": "run",
              "hardware": "run", "attempts": "run", "rounds": "run"}
# What makes a run the same run in two plans (its position and measured step time may change).
RUN_IDENTITY = ("model", "scale", "channels", "epochs", "batch_size", "patch_size", "steps_per_epoch",
                "steps_total")


def run_identity(run: dict, chunks: list) -> str:
    """Returns a run's identity (its training settings and chunk boundaries) as comparable text;
    `run` is a plan payload's run or a `runs` row (whose config is JSON text)."""
    config = run["config"] if isinstance(run["config"], dict) else json.loads(run["config"])
    return json.dumps({**{k: run[k] for k in RUN_IDENTITY}, "config": config,
                       "chunks": [list(c) for c in chunks]}, sort_keys=True, default=str)


def unchanged_runs(old_fingerprint: str | None, old_runs: dict[str, str], new_fingerprint: str,
                   new_runs: dict[str, str]) -> set[str]:
    """Returns the runs a replacing plan keeps: those whose identity (run -> run_identity) is the
    same in both plans, on the same data. A change of data starts every run over."""
    if old_fingerprint != new_fingerprint:
        return set()
    return {name for name, identity in new_runs.items() if old_runs.get(name) == identity}
from shardrun.ledger.summaries import Summaries, validation_of


def _plan_extras(p: dict) -> dict[str, Any]:
    """Returns what the plan row keeps as JSON: the estimate, the validation set and, where the
    plan has collaborative runs, each one's record (its rounds, each replica's shards)."""
    extras = {k: p[k] for k in ("estimate", "validation") if k in p}
    collaborative = {r["name"]: r["collaborative"] for r in p.get("runs", []) if isinstance(r.get("collaborative"), dict)}
    if collaborative:
        extras["collaborative"] = collaborative
    return extras


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
                  "payload": json.dumps(_plan_extras(p), sort_keys=True)}],
        "accounts": [], "shards": [], "runs": [], "chunks": [], "rejected": [], "rounds": [],
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
        if isinstance(r.get("collaborative"), dict):
            _round_rows(rows, r["name"], r["collaborative"], event.server_time)
    for r in p.get("rejected", []):
        rows["rejected"].append({"path": r["path"], "reason": r["reason"]})
    return rows


def unit_bounds(collaborative: dict, round_: int) -> tuple[int, int]:
    """Returns the inner steps [start, end) each replica trains in `round_` of a collaborative run."""
    h, steps = collaborative["sync_every"], collaborative["steps_per_replica"]
    return round_ * h, min(steps, (round_ + 1) * h)


def _round_rows(rows: dict[str, list[dict]], run: str, c: dict, plan_time: float) -> None:
    """Adds a collaborative run's units (round r, replica i: chunk r * replicas + i, trained like a
    chunk) and rounds; round 0 is open from the plan on, the others wait for the round before."""
    for round_ in range(c["rounds"]):
        start, end = unit_bounds(c, round_)
        rows["rounds"].append({"run": run, "round": round_, "state": "open" if round_ == 0 else "waiting",
                               "opened_time": plan_time if round_ == 0 else None})
        for replica in range(c["replicas"]):
            rows["chunks"].append({"run": run, "idx": round_ * c["replicas"] + replica, "start_step": start,
                                   "end_step": end, "state": "ready" if round_ == 0 else "waiting",
                                   "generation": 0, "step_reached": start, "attempts": 0,
                                   "round": round_, "replica": replica})


class Fold:
    """Applies events to the derived tables of one open connection, one event at a time."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.summary = Summaries(conn)
        row = conn.execute("SELECT id FROM plan").fetchone()
        self.plan_id: str | None = row[0] if row else None

    def apply(self, event: Event) -> None:
        if event.kind != "plan" and event.plan is not None and event.plan != self.plan_id:
            return  # written under another plan (one replaced since, or not yet in force)
        if event.kind != "plan" and event.worker:
            self.summary.seen(event)
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(event)

    def _rows(self, sql: str, args: tuple) -> list[dict]:
        cur = self.conn.execute(sql, args)
        return [dict(zip([c[0] for c in cur.description], row)) for row in cur.fetchall()]

    def _chunk(self, event: Event) -> dict | None:
        if event.run is None or event.chunk is None:
            return None
        rows = self._rows("SELECT * FROM chunks WHERE run = ? AND idx = ?", (event.run, event.chunk))
        return rows[0] if rows else None

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
        current = self.conn.execute("SELECT id, fingerprint FROM plan").fetchone()
        if current and current[0] == event.payload.get("plan_id"):
            return  # the same plan written again (a re-run of `plan`)
        if current and event.payload.get("replaces") != current[0]:
            return  # a stale plan that does not knowingly supersede the current one
        tables = _plan_tables(event)
        kept = self._kept_runs(current[1] if current else None, event.payload) if current else set()
        for table in DERIVED_TABLES:
            if table in RUN_TABLES and kept:
                marks = ", ".join("?" * len(kept))
                self.conn.execute(f"DELETE FROM {table} WHERE {RUN_TABLES[table]} NOT IN ({marks})", sorted(kept))
            elif table != "workers" or not kept:
                self.conn.execute(f"DELETE FROM {table}")
        tables["chunks"] = [c for c in tables["chunks"] if c["run"] not in kept]
        tables["rounds"] = [r for r in tables["rounds"] if r["run"] not in kept]
        self.summary.forget_runs()
        self.plan_id = event.payload["plan_id"]
        self._collaborative = None
        for table, rows in tables.items():
            if rows:
                cols = sorted({c for row in rows for c in row})
                self.conn.executemany(
                    f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [tuple(r.get(c) for c in cols) for r in rows])

    def _kept_runs(self, old_fingerprint: str | None, payload: dict) -> set[str]:
        old = {}
        for row in self.conn.execute("SELECT * FROM runs").fetchall():
            run = dict(zip([c[0] for c in self.conn.execute("SELECT * FROM runs LIMIT 0").description], row))
            bounds = self.conn.execute("SELECT start_step, end_step FROM chunks WHERE run = ? AND round IS NULL ORDER BY idx",
                                       (run["name"],)).fetchall()
            old[run["name"]] = run_identity(run, bounds)
        new = {r["name"]: run_identity(r, r["chunks"]) for r in payload["runs"]}
        return unchanged_runs(old_fingerprint, old, payload["fingerprint"], new)

    def _on_claim(self, event: Event) -> None:
        chunk = self._chunk(event)
        if chunk and chunk["state"] == "ready" and chunk["generation"] == event.generation:
            self._update(chunk, state="running", owner=event.worker, claim_time=event.server_time,
                         heartbeat_time=event.server_time, attempts=chunk["attempts"] + 1)
            if chunk["round"] is not None:  # a round's timeout runs from its first claim
                self.conn.execute("UPDATE rounds SET started_time = ? WHERE run = ? AND round = ? "
                                  "AND started_time IS NULL", (event.server_time, chunk["run"], chunk["round"]))
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
        # The first event naming a key records it; the latest validation reported for it is kept.
        validation = validation_of(event.payload)
        self.conn.execute(
            "INSERT INTO checkpoints (run, step, key, md5, chunk, generation, worker, server_time, validation) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET validation = COALESCE(excluded.validation, validation)",
            (chunk["run"], step, event.payload["key"], event.payload.get("md5"), chunk["idx"],
             chunk["generation"], event.worker, event.server_time,
             None if validation is None else json.dumps(validation, sort_keys=True)))

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
        unit = chunk["round"] is not None
        if unit and not self._change_fits(chunk, event.payload.get("change")):
            return  # a replica's round ends only with its change of weights, from the round's weights
        self._update(chunk, state="done", step_reached=chunk["end_step"], done_time=event.server_time,
                     checkpoint_key=event.payload["key"], checkpoint_md5=event.payload.get("md5"))
        self._record_checkpoint(chunk, event, chunk["end_step"])
        self.summary.progress(event, chunk, chunk["end_step"], checkpoint=True)
        self.summary.ended(event, chunk, "done")
        if unit:
            change = event.payload["change"]
            self._update(chunk, change_key=change["key"], change_sha256=change["sha256"],
                         change_md5=change.get("md5"), change_size=change["size"])
            self._close_if_complete(chunk["run"], chunk["round"], event)
            return
        nxt = self.conn.execute("SELECT idx FROM chunks WHERE run = ? AND idx = ? AND state = 'waiting'",
                                (chunk["run"], chunk["idx"] + 1)).fetchone()
        if nxt:
            self.conn.execute(
                "UPDATE chunks SET state = 'ready', start_checkpoint_key = ?, start_checkpoint_md5 = ? "
                "WHERE run = ? AND idx = ?",
                (event.payload["key"], event.payload.get("md5"), chunk["run"], chunk["idx"] + 1))

    # -- collaborative runs: rounds (docs/collaborative.md) --

    def _collaborative_of(self, run: str) -> dict | None:
        if getattr(self, "_collaborative", None) is None:
            row = self.conn.execute("SELECT payload FROM plan").fetchone()
            self._collaborative = json.loads(row[0] or "{}").get("collaborative", {}) if row else {}
        return self._collaborative.get(run)

    def _round(self, run: str | None, round_: int | None) -> dict | None:
        if run is None or round_ is None:
            return None
        rows = self._rows("SELECT * FROM rounds WHERE run = ? AND round = ?", (run, round_))
        return rows[0] if rows else None

    def _set_round(self, row: dict, **changes) -> None:
        sets = ", ".join(f"{k} = ?" for k in changes)
        self.conn.execute(f"UPDATE rounds SET {sets} WHERE run = ? AND round = ?",
                          (*changes.values(), row["run"], row["round"]))

    def _change_fits(self, unit: dict, change: dict | None) -> bool:
        """True when a unit's `done` hands in a change made from its round's global weights (the
        first change of round 0 names them: every worker builds them from the run's seed)."""
        row = self._round(unit["run"], unit["round"])
        if change is None or row is None:
            return False
        if row["base_sha256"] is None and unit["round"] == 0:
            if change.get("base") is not None:
                self._set_round(row, base_sha256=change["base"])
            return True
        return change.get("base") == row["base_sha256"]

    def _units_done(self, run: str, round_: int) -> list[tuple[int, int]]:
        """Returns (replica, change size) of the round's units whose change is in, in replica order."""
        return self.conn.execute("SELECT replica, change_size FROM chunks WHERE run = ? AND round = ? "
                                 "AND state = 'done' ORDER BY replica", (run, round_)).fetchall()

    def _close(self, row: dict, event: Event, done: list[tuple[int, int]], closed_by: str) -> None:
        self._set_round(row, state="closed", closed_time=event.server_time, closed_by=closed_by,
                        replicas=json.dumps([r for r, _ in done]), change_bytes=sum(size for _, size in done))
        for unit in self._rows("SELECT * FROM chunks WHERE run = ? AND round = ? AND state = 'running'",
                               (row["run"], row["round"])):  # their attempts end here (retention may let their uploads go)
            self.summary.ended(event, unit, "expired")
        # The replicas left out are dropped: their late events are fenced off (they own nothing),
        # and they start the next round from its global weights like the others.
        self.conn.execute("UPDATE chunks SET state = 'dropped', owner = NULL WHERE run = ? AND round = ? "
                          "AND state != 'done'", (row["run"], row["round"]))

    def _close_if_complete(self, run: str, round_: int, event: Event) -> None:
        row, collab = self._round(run, round_), self._collaborative_of(run)
        done = self._units_done(run, round_)
        if row and collab and row["state"] == "open" and len(done) == collab["replicas"]:
            self._close(row, event, done, "all")

    def _on_close(self, event: Event) -> None:
        # Any worker may close a round that waited past round_timeout (the store's time of this
        # very event against the round's first claim: a round nobody worked on has not waited)
        # with at least min_replicas changes in.
        row, collab = self._round(event.run, event.chunk), self._collaborative_of(event.run or "")
        if not row or not collab or row["state"] != "open":
            return
        done = self._units_done(row["run"], row["round"])
        if (row["started_time"] is not None
                and event.server_time - row["started_time"] >= collab["round_timeout_minutes"] * 60
                and len(done) >= collab["min_replicas"]):
            self._close(row, event, done, "timeout")

    def _on_outer(self, event: Event) -> None:
        # The first outer step in fold order for a closed round, computed from exactly the changes
        # the round closed with, is the round's result; later copies (other workers computed the
        # same step: the same bytes) change nothing.
        row, p = self._round(event.run, event.chunk), event.payload
        if not row or row["state"] != "closed" or p["replicas"] != json.loads(row["replicas"]):
            return
        # ... and from exactly the inputs the ledger holds: the round's weights, its changes.
        changes = [c for (c,) in self.conn.execute(
            "SELECT change_sha256 FROM chunks WHERE run = ? AND round = ? AND state = 'done' ORDER BY replica",
            (row["run"], row["round"]))]
        if p.get("base") != row["base_sha256"] or p.get("changes") != changes:
            return
        weights, momentum = p["weights"], p["momentum"]
        validation = validation_of(p)
        checkpoint = p.get("checkpoint") if isinstance(p.get("checkpoint"), dict) else {}
        checkpoint = checkpoint if all(isinstance(checkpoint.get(k), str) for k in ("key", "md5")) else {}
        self._set_round(row, state="done", done_time=event.server_time, outer_worker=event.worker,
                        weights_key=weights["key"], weights_sha256=weights["sha256"], weights_md5=weights.get("md5"),
                        weights_size=weights["size"], momentum_key=momentum["key"],
                        momentum_sha256=momentum["sha256"], momentum_md5=momentum.get("md5"),
                        momentum_size=momentum["size"],
                        validation=None if validation is None else json.dumps(validation, sort_keys=True),
                        checkpoint_key=checkpoint.get("key"), checkpoint_md5=checkpoint.get("md5"))
        step = p.get("step")
        if validation is not None and isinstance(step, int) and not isinstance(step, bool):
            # The run's validation is its global network's (replicas validate nothing of their own).
            self.summary.progress(event, {"run": row["run"], "idx": None, "generation": None}, step, checkpoint=False)
        nxt = self._round(row["run"], row["round"] + 1)
        if nxt and nxt["state"] == "waiting":
            self._set_round(nxt, state="open", opened_time=event.server_time, base_sha256=weights["sha256"])
            self.conn.execute("UPDATE chunks SET state = 'ready' WHERE run = ? AND round = ? AND state = 'waiting'",
                              (row["run"], row["round"] + 1))

    def _on_reject(self, event: Event) -> None:
        # A worker could not read a unit's change (missing, or failing its sha256) for the outer
        # step: the unit trains again at its next generation (from its final checkpoint: a change
        # recomputed at once), and its round waits for it again. It is never part of a result.
        unit = self._chunk(event)
        if not unit or unit["round"] is None or unit["state"] != "done" or unit["generation"] != event.generation:
            return
        row = self._round(unit["run"], unit["round"])
        if row is None or row["state"] != "closed":
            return
        self._update(unit, state="ready", generation=unit["generation"] + 1, owner=None, claim_time=None,
                     change_key=None, change_sha256=None, change_md5=None, change_size=None,
                     last_error=str(event.payload.get("reason", "its change could not be read")))
        self._set_round(row, state="open", closed_time=None, closed_by=None, replicas=None, change_bytes=None)
        self.conn.execute("UPDATE chunks SET state = 'ready', generation = generation + 1 WHERE run = ? AND round = ? "
                          "AND state = 'dropped'", (row["run"], row["round"]))

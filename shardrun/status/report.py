"""`shardrun status`: the ledger as a JSON-ready object (schema in docs/status-json.md)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from shardrun import paths
from shardrun.clock import Clock, SystemClock
from shardrun.config.job import JobConfig
from shardrun.plan.job import load_job_ledger
from shardrun.ledger.schema import CHUNK_STATES
from shardrun.ledger.db import Ledger
from shardrun.status.figures import (
    collaborative_figures,
    collaborative_steps,
    estimate_eta,
    hardware_rows,
    lost_sessions_allowance,
    run_figures,
    sessions_summary,
    training_settings,
    worker_rows,
)
from shardrun.errors import IntegrityError, StoreError
from shardrun.storage.base import Usage
from shardrun.units import iso_time

STATUS_SCHEMA = "shardrun.status/1"
RECENT_WORKERS_S = 24 * 3600  # workers shown: seen within a day of the latest event, or running


def job_status(job: JobConfig, clock: Clock | None = None, live_usage: bool = True,
               with_ledger: Callable[[Ledger], object] | None = None, pictures: bool = False) -> dict:
    """Returns the job's status: the ledger synced with the journal, plus live account usage.

    With `pictures` (for the HTML page), each run's latest validation pictures are fetched from
    the home store, hash-checked, and put in `validation.pictures.png` (bytes, not JSON).

    `with_ledger` is called with the synced ledger before it closes (`status --tensorboard`
    exports from it), so a second view of the job costs no second sync.
    """
    clock = clock or SystemClock()
    notes = []
    # Asking every account for its usage is I/O-bound (a folder walk, an API call): do it while
    # the ledger syncs.
    with ThreadPoolExecutor(max(1, len(job.accounts))) as pool:
        usages = {a.name: pool.submit(_usage, job, a) for a in job.accounts} if live_usage else {}
        home = job.open_store(job.home)
        try:
            ledger, _ = load_job_ledger(job, home, clock)
        except StoreError as e:
            notes.append(f"the journal could not be read ({e}); showing the local ledger")
            ledger = Ledger.open(job.ledger_path)
        try:
            result = status_from_ledger(job, ledger, clock, {n: f.result() for n, f in usages.items()}, notes)
            if with_ledger is not None:
                with_ledger(ledger)
            if pictures:
                _fetch_pictures(home, result)
            return result
        finally:
            ledger.close()


def _fetch_pictures(home, status: dict) -> None:
    """Adds each run's latest validation pictures (PNG bytes); one that fails its hash or cannot
    be read is left out with a note, never a failed status."""
    for run in status["runs"]:
        pictures = (run.get("validation") or {}).get("pictures")
        if not pictures:
            continue
        try:
            pictures["png"] = home.get_bytes(pictures["key"], pictures["md5"])
        except (StoreError, IntegrityError) as e:
            status["notes"].append(f"run {run['name']}: the validation pictures {pictures['key']} could not be "
                                   f"read ({e}); the page shows none for it")


def _usage(job: JobConfig, account) -> Usage | StoreError:
    try:
        return job.open_store(account).usage()
    except StoreError as e:
        return e
    except Exception as e:  # noqa: BLE001 - an account that cannot be reached shows as unknown, never a crash
        return StoreError(f"{account.store}: {type(e).__name__}: {e}")


def status_from_ledger(job: JobConfig, ledger: Ledger, clock: Clock, usages: dict[str, Usage | StoreError],
                       notes: list[str]) -> dict:
    plan = ledger.plan()
    if plan is None:
        notes.append(f"job {job.name!r} has no plan yet: run `shardrun plan` first")
    counts = ledger.chunk_counts()
    now, as_of = clock.now(), ledger.latest_time()
    lease = plan["lease_seconds"] if plan else 600.0
    metrics = ledger.run_metrics()
    ledger_runs = {r["name"]: r for r in ledger.runs()}
    runs = []
    for run in ledger_runs.values():
        chunks = counts.get(run["name"], dict.fromkeys(CHUNK_STATES, 0))
        record = ledger.collaborative(run["name"])
        collaborative, steps_done = None, run["steps_done"]
        if record is not None:
            # The ledger sums every replica's steps; the run's steps_total is each replica's.
            rounds, units = ledger.rounds(run["name"]), ledger.chunks(run["name"])
            steps_done = collaborative_steps(record, rounds, units)
            collaborative = {**collaborative_figures(record, rounds, units, as_of),
                             "replica_steps_done": run["steps_done"],
                             "replica_steps_total": run["steps_total"] * record["replicas"]}
        runs.append({
            "name": run["name"], "model": run["model"], "scale": run["scale"], "channels": run["channels"],
            "epochs": run["epochs"], "steps_per_epoch": run["steps_per_epoch"],
            "steps_done": steps_done, "steps_total": run["steps_total"],
            "epochs_done": steps_done / run["steps_per_epoch"],
            "chunks": chunks, "chunks_total": sum(chunks.values()),
            "training": training_settings(run["config"]),
            **run_figures(run, metrics.get(run["name"]), ledger.history(run["name"])),
            "mode": "plain" if record is None else "collaborative",
            "collaborative": collaborative,
            "waits_for": ledger.waits_for(run["name"]),
        })
        if runs[-1]["waits_for"]:
            notes.append(f"run {run['name']} starts from run {runs[-1]['waits_for']}'s final network: "
                         f"no worker starts it before {runs[-1]['waits_for']} has finished")
    running_chunks = ledger.chunks(state="running")
    owners = {c["owner"] for c in running_chunks}
    workers = worker_rows(_recent_workers(ledger, as_of, owners), as_of, lease, owners)
    by_id = {w["id"]: w for w in workers}
    running = {c["run"]: by_id[c["owner"]] for c in running_chunks
               if c["owner"] in by_id and not by_id[c["owner"]]["stale"]}
    alive = sum(1 for w in workers if w["state"] in ("running", "alive"))
    allowance = lost_sessions_allowance(ledger.attempt_totals())
    eta = estimate_eta(runs, ledger_runs, metrics, running, alive, allowance, as_of, now)
    # A chunk whose latest attempt failed (a worker found no checkpoint it could resume it from)
    # waits for a worker that can, with the reason.
    for c in ledger.db.query(
            "SELECT c.run, c.idx, c.last_error FROM chunks c JOIN attempts a ON a.run = c.run AND a.chunk = c.idx "
            "AND a.generation = c.generation - 1 WHERE c.state = 'ready' AND a.outcome = 'fail' ORDER BY c.run, c.idx"):
        notes.append(f"run {c['run']} chunk {c['idx']} failed: {c['last_error']}")
    if running_chunks and as_of is not None and now - as_of >= lease:
        notes.append(f"the journal's latest event is {(now - as_of) / 60:.0f} min old by this machine's clock: "
                     f"its workers may all have stopped (a lease is {lease / 60:g} min)")
    accounts = []
    planned = {a["name"]: a for a in ledger.accounts()}
    for account in job.accounts:
        row = planned.get(account.name, {})
        entry = {"name": account.name, "store": account.store, "quota_bytes": account.quota_bytes,
                 "used_bytes": None, "placed_bytes": row.get("placed_bytes", 0),
                 "shards": row.get("shards", 0), "reachable": None}
        usage = usages.get(account.name)
        if isinstance(usage, StoreError):
            entry["reachable"], entry["error"] = False, str(usage)
        elif usage is not None:
            entry["used_bytes"], entry["reachable"] = usage.used_bytes, True
            if usage.limit_bytes is not None:
                entry["quota_bytes"] = usage.limit_bytes
        accounts.append(entry)
    return {
        "schema": STATUS_SCHEMA,
        "job": job.name,
        "generated_at": iso_time(clock.now()),
        "plan": None if plan is None else {
            "id": plan["id"], "planned_at": iso_time(plan["server_time"]), "images": plan["images"],
            "image_bytes": plan["image_bytes"], "rejected": plan["rejected"], "platform": plan["platform"],
            "profile": plan["profile"], **json.loads(plan["payload"] or "{}"),
        },
        "as_of": iso_time(as_of),
        "lease_seconds": lease,
        "runs": runs,
        "eta": eta,
        "workers": workers,
        "sessions": sessions_summary(ledger.sessions(), as_of, lease),
        "hardware": hardware_rows(ledger.hardware(), ledger_runs),
        "accounts": accounts,
        "rejected": ledger.rejected(),
        "journal": {"events": ledger.event_count(),
                    "unreadable": [{"id": paths.event_id_of(b["key"]), **b} for b in ledger.bad_events()]},
        "notes": notes,
    }


def _recent_workers(ledger: Ledger, as_of: float | None, running_owners: set[str]) -> list[dict]:
    """Returns the ledger's rows of the workers seen within a day of the latest event, or owning a
    running chunk (a worker silent for longer still holds its chunk until someone expires it)."""
    since = None if as_of is None else as_of - RECENT_WORKERS_S
    rows = {w["id"]: w for w in ledger.workers(since)}
    for owner in running_owners - set(rows):
        if (row := ledger.worker(owner)) is not None:
            rows[owner] = row
    return list(rows.values())

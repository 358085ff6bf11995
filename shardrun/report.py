"""`shardrun status`: the ledger as a JSON-ready object (schema in docs/status-json.md)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from shardrun.clock import Clock, SystemClock
from shardrun.config import JobConfig
from shardrun.coordinator import load_job_ledger
from shardrun.ledger import CHUNK_STATES, Ledger
from shardrun.storage import StoreError, Usage, open_store

STATUS_SCHEMA = "shardrun.status/1"


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def job_status(job: JobConfig, clock: Clock | None = None, live_usage: bool = True) -> dict:
    """Returns the job's status: the ledger synced with the journal, plus live account usage."""
    clock = clock or SystemClock()
    notes = []
    # Asking every account for its usage is I/O-bound (a folder walk, an API call): do it while
    # the ledger syncs.
    with ThreadPoolExecutor(max(1, len(job.accounts))) as pool:
        usages = {a.name: pool.submit(_usage, job, a) for a in job.accounts} if live_usage else {}
        home = open_store(job.home.store, job.home.quota_bytes, job.base_dir)
        try:
            ledger, _ = load_job_ledger(job, home, clock)
        except StoreError as e:
            notes.append(f"the journal could not be read ({e}); showing the local ledger")
            ledger = Ledger.open(job.ledger_path)
        try:
            return status_from_ledger(job, ledger, clock, {n: f.result() for n, f in usages.items()}, notes)
        finally:
            ledger.close()


def _usage(job: JobConfig, account) -> Usage | StoreError:
    try:
        return open_store(account.store, account.quota_bytes, job.base_dir).usage()
    except StoreError as e:
        return e


def status_from_ledger(job: JobConfig, ledger: Ledger, clock: Clock, usages: dict[str, Usage | StoreError],
                       notes: list[str]) -> dict:
    plan = ledger.plan()
    if plan is None:
        notes.append(f"job {job.name!r} has no plan yet: run `shardrun plan` first")
    counts = ledger.chunk_counts()
    runs = []
    for run in ledger.runs():
        chunks = counts.get(run["name"], dict.fromkeys(CHUNK_STATES, 0))
        runs.append({
            "name": run["name"], "model": run["model"], "scale": run["scale"], "channels": run["channels"],
            "epochs": run["epochs"], "steps_per_epoch": run["steps_per_epoch"],
            "steps_done": run["steps_done"], "steps_total": run["steps_total"],
            "epochs_done": run["steps_done"] / run["steps_per_epoch"],
            "chunks": chunks, "chunks_total": sum(chunks.values()),
        })
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
        "generated_at": _iso(clock.now()),
        "plan": None if plan is None else {
            "id": plan["id"], "planned_at": _iso(plan["server_time"]), "images": plan["images"],
            "image_bytes": plan["image_bytes"], "rejected": plan["rejected"], "platform": plan["platform"],
            "profile": plan["profile"], **json.loads(plan["payload"] or "{}"),
        },
        "runs": runs,
        "accounts": accounts,
        "rejected": ledger.rejected(),
        "journal": {"events": ledger.event_count(), "unreadable": ledger.bad_events()},
        "notes": notes,
    }

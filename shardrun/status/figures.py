"""The figures `status` derives from the ledger's summaries: each run's losses, validation and
history; the workers and whether they are stale; the sessions; throughput by hardware; the ETA.

Pure: rows in (as the ledger's queries return them, gathered by status/report.py), numbers out.

Time here is the store's: a worker is stale when the journal holds an event written a lease or
more after the worker's last one (the rule the fold applies to expiries), never by comparing this
machine's clock with another's.
"""

from __future__ import annotations

import json
import math
import statistics

from shardrun.units import iso_time

MAX_WORKERS_SHOWN = 100
RECENT_SESSIONS = 20
MAX_LOST_SHARE = 0.5  # the allowance never more than doubles the ETA
SESSION_HOURS_BINS = (1, 2, 4, 6, 8, 10, 12)  # upper edges of the session-length histogram


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def run_figures(run: dict, metrics: dict | None, history: list[dict]) -> dict:
    """Returns a run's loss, validation and downsampled history for the status object."""
    m = metrics or {}
    validation = None
    if m.get("psnr") is not None:
        validation = {"step": m["val_step"], "time": iso_time(m["val_time"]), "psnr": m["psnr"], "ssim": m["ssim"],
                      "bicubic_psnr": m["bicubic_psnr"], "bicubic_ssim": m["bicubic_ssim"],
                      "gain_db": m["psnr"] - m["bicubic_psnr"], "images": m["val_images"],
                      "best_psnr": m["best_psnr"], "best_psnr_step": m["best_psnr_step"],
                      "set": m.get("val_set"), "pictures": None if not m.get("val_pictures_key") else {
                          "key": m["val_pictures_key"], "md5": m["val_pictures_md5"],
                          "crops": json.loads(m.get("val_pictures") or "[]")}}
    return {
        "loss": {"current": m.get("loss"), "current_step": m.get("loss_step"),
                 "best": m.get("best_loss"), "best_step": m.get("best_loss_step")},
        "learning_rate": {"current": m.get("learning_rate"), "step": m.get("learning_rate_step")},
        "validation": validation,
        "history": [{"step": h["step_max"], "time": h["time_last"],
                     "loss": h["loss_sum"] / h["loss_n"] if h["loss_n"] else None, "loss_min": h["loss_min"],
                     "psnr": h["psnr"], "ssim": h["ssim"], "bicubic_psnr": h["bicubic_psnr"],
                     "bicubic_ssim": h["bicubic_ssim"]} for h in history],
    }


PRECISION_SHORT = {"float32": "fp32", "mixed_float16": "mixed16", "bfloat16": "bf16"}


def training_settings(config_json: str | None) -> dict:
    """Returns how a run computes, from its settings as the plan recorded them (the ledger's
    `runs.config`): precision, XLA (`None`: as the worker decides, on an accelerator unless
    deterministic), determinism, and a compact label such as "fp32 · det" or "mixed16 · fast · xla".

    A run planned before these settings existed trained with their defaults, shown as such.
    """
    config = json.loads(config_json or "{}")
    precision = config.get("precision") or "float32"
    xla = config.get("xla")
    deterministic = config.get("deterministic", True)
    parts = [PRECISION_SHORT.get(precision, precision), "det" if deterministic else "fast"]
    if xla:
        parts.append("xla")
    elif xla is None and not deterministic:
        parts.append("xla auto")  # deterministic with xla unset never compiles: nothing to show
    return {"precision": precision, "xla": xla, "deterministic": deterministic, "label": " · ".join(parts)}


def _is_silent(row: dict, as_of: float | None, lease: float) -> bool:
    """Returns whether the journal holds an event a lease or more after the worker's last one."""
    return as_of is not None and as_of - row["last_time"] >= lease


def _has_ended(row: dict, as_of: float | None, lease: float) -> bool:
    """Returns whether the worker process is gone: it said so (a leave event), or it went silent."""
    return bool(row.get("left_reason")) or _is_silent(row, as_of, lease)


def _is_stale(row: dict, as_of: float | None, lease: float) -> bool:
    """Returns whether the worker went silent in the middle of its work: not after a clean end
    (a leave, or its last event a yield or a done), which is how a session is meant to stop."""
    return (not row.get("left_reason") and _is_silent(row, as_of, lease)
            and row["last_kind"] not in ("yield", "done"))


def worker_rows(rows: list[dict], as_of: float | None, lease: float, running_owners: set[str]) -> list[dict]:
    """Returns the workers of `rows` (the ledger's worker rows), latest first, each with its state."""
    out = []
    for w in sorted(rows, key=lambda w: (-w["last_time"], w["id"]))[:MAX_WORKERS_SHOWN]:
        if _is_stale(w, as_of, lease):
            state = "stale"
        elif _has_ended(w, as_of, lease):
            state = "ended"
        else:
            state = "running" if w["id"] in running_owners else "alive"
        out.append({
            "id": w["id"], "account": w["account"], "platform": w["platform"], "device": w["device"],
            "first_seen": iso_time(w["first_time"]), "last_seen": iso_time(w["last_time"]), "last_event": w["last_kind"],
            "silent_seconds": None if as_of is None else as_of - w["last_time"],
            "stale": state == "stale", "running": w["id"] in running_owners, "state": state,
            "left_reason": w.get("left_reason"),
            "run": w["run"], "chunk": w["chunk"], "step": w["step"], "loss": w["loss"],
            "patches_per_second": w["patches_per_second"], "steps_per_second": w["steps_per_second"],
            "events": w["events"], "chunks_done": w["chunks_done"],
        })
    return out


def _session_end(w: dict, as_of: float | None, lease: float) -> str:
    if not _has_ended(w, as_of, lease):
        return "running"
    if w["last_kind"] == "yield":
        return "yielded"  # checkpointed and handed on at its deadline (or when asked to stop)
    if w["last_kind"] == "done":
        return "finished"  # its last chunk was done: the job ended, or it was told to stop
    if w.get("left_reason"):
        return "left"  # stopped cleanly without a chunk to hand on (nothing to claim, or told to stop)
    return "lost" if w["expired"] else "silent"  # died mid-chunk (its lease was declared expired)


def sessions_summary(rows: list[dict], as_of: float | None, lease: float) -> dict:
    """Returns the sessions so far and their lengths in store time, from the ledger's session rows
    (one per worker process, in start order)."""
    lengths = [w["last_time"] - w["first_time"] for w in rows]
    ends = {k: 0 for k in ("running", "yielded", "finished", "left", "lost", "silent")}
    for w in rows:
        ends[_session_end(w, as_of, lease)] += 1
    histogram = [0] * (len(SESSION_HOURS_BINS) + 1)
    for seconds in lengths:
        histogram[next((i for i, edge in enumerate(SESSION_HOURS_BINS) if seconds < edge * 3600),
                       len(SESSION_HOURS_BINS))] += 1
    recent = [{"worker": w["id"], "account": w["account"], "platform": w["platform"], "device": w["device"],
               "started": iso_time(w["first_time"]), "last_seen": iso_time(w["last_time"]),
               "seconds": w["last_time"] - w["first_time"], "end": _session_end(w, as_of, lease),
               "chunks_done": w["chunks_done"]} for w in rows[-RECENT_SESSIONS:][::-1]]
    return {
        "count": len(rows), "ended": ends, "total_seconds": sum(lengths),
        "mean_seconds": statistics.fmean(lengths) if lengths else None,
        "median_seconds": statistics.median(lengths) if lengths else None,
        "longest_seconds": max(lengths) if lengths else None,
        "length_histogram": {"upper_hours": list(SESSION_HOURS_BINS), "counts": histogram},
        "recent": recent,
    }


def hardware_rows(rows: list[dict], runs: dict[str, dict]) -> list[dict]:
    """Returns the measured throughput per (device, platform, run), with its epoch time, from the
    ledger's hardware rows and its runs by name."""
    out = []
    for h in rows:
        run = runs.get(h["run"])
        if run is None:
            continue
        config = json.loads(run["config"] or "{}")
        pps = h["pps_sum"] / h["samples"]
        per_image = config.get("patches_per_image")
        out.append({
            "device": h["device"], "platform": h["platform"], "run": h["run"], "model": run["model"],
            "samples": h["samples"], "patches_per_second": pps, "patches_per_second_max": h["pps_max"],
            "steps_per_second": pps / run["batch_size"],
            "images_per_second": pps / per_image if per_image else None,
            "epoch_seconds": run["steps_per_epoch"] * run["batch_size"] / pps if pps > 0 else None,
        })
    return out


def lost_sessions_allowance(totals: dict[str, dict]) -> dict:
    """Returns the ETA's allowance for lost sessions, from the chunk attempts that ended so far.

    A session that dies mid-chunk costs the training since its last checkpoint plus the lease the
    chunk waits before another worker may take it: the time from that attempt's last checkpoint
    (or claim) to the expiry. The share of all attempts' time lost that way is the share of
    future time expected to be lost too, so the ETA is divided by (1 - share), capped at half.
    """
    worked = sum(t["seconds"] or 0.0 for t in totals.values())
    expired = totals.get("expired", {})
    lost = expired.get("since_checkpoint") or 0.0
    share = lost / worked if worked > 0 else 0.0
    factor = 1.0 / (1.0 - min(share, MAX_LOST_SHARE))
    attempts = sum(t["attempts"] for t in totals.values())
    return {
        "factor": factor, "lost_share": share, "expired_attempts": expired.get("attempts", 0),
        "ended_attempts": attempts, "lost_seconds": lost, "worked_seconds": worked,
        "rule": "ETA x 1/(1 - lost share); lost share = time from each expired attempt's last checkpoint "
                "to its expiry, over the time of all ended chunk attempts (claim to end); capped at 50%",
    }


def estimate_eta(runs: list[dict], ledger_runs: dict[str, dict], metrics: dict[str, dict],
                 running: dict[str, dict], alive: int, allowance: dict, as_of: float | None,
                 now: float) -> dict | None:
    """Returns the ETA: each run's remaining steps at its recent throughput, spread over the workers.

    A run is a chain of chunks, so one run never goes faster than one worker; with W workers
    alive the job takes at least its longest run and at least the total work over W. A
    collaborative run's N replicas train side by side, each its own remaining steps: the run
    takes its remaining steps' time with N workers, ⌈N / W⌉ times that with fewer (a round waits
    for its replicas' turns), and counts N times that time in the work.
    Throughput per run: the worker training it now (if not stale), else the run's latest report,
    else the plan's estimate. `at` counts from the state described (`as_of`, store time), or from
    `now` before any event. While no worker is alive and work remains there is no ETA (`seconds`,
    `at` and each run's `eta_seconds` are None): nothing moves until someone starts a session, and
    `training_seconds` still tells the training left for one worker.
    """
    if not runs:
        return None
    per_run = []
    for r in runs:
        remaining = max(0, r["steps_total"] - r["steps_done"])
        rate, source = None, None
        worker = running.get(r["name"])
        if worker is not None and worker["steps_per_second"]:
            rate, source = worker["steps_per_second"], f"worker {worker['id']}"
        elif (metrics.get(r["name"]) or {}).get("steps_per_second"):
            rate, source = metrics[r["name"]]["steps_per_second"], "latest report"
        elif ledger_runs[r["name"]]["step_seconds"]:
            rate, source = 1.0 / ledger_runs[r["name"]]["step_seconds"], "plan estimate"
        seconds = 0.0 if remaining == 0 else _ratio(remaining, rate)
        replicas = (r.get("collaborative") or {}).get("replicas", 1)
        per_run.append({"name": r["name"], "remaining_steps": remaining, "steps_per_second": rate,
                        "source": source, "seconds": seconds, "replicas": replicas})
        r["eta_seconds"] = None if seconds is None else (seconds * math.ceil(replicas / max(1, alive))
                                                         * allowance["factor"])
    if any(p["seconds"] is None for p in per_run):
        return {"seconds": None, "at": None, "finished": False, "runs": per_run, "workers": max(1, alive),
                "workers_alive": alive, "allowance": allowance, "training_seconds": None}
    workers = max(1, alive)
    training = max(max(p["seconds"] * math.ceil(p["replicas"] / workers) for p in per_run),
                   sum(p["seconds"] * p["replicas"] for p in per_run) / workers)
    seconds = training * allowance["factor"]
    if alive == 0 and training:
        for r in runs:
            r["eta_seconds"] = None
        return {"seconds": None, "at": None, "finished": False, "runs": per_run, "workers": workers,
                "workers_alive": 0, "training_seconds": training, "allowance": allowance}
    start = as_of if as_of is not None else now
    # A collaborative run whose replicas have trained every step is not finished before its last
    # outer step: no training is left, but the run is not done.
    pending = any(c.get("rounds_done", 0) < c.get("rounds_total", 0) for c in (r.get("collaborative") for r in runs)
                  if c)
    finished = training == 0 and not pending
    return {"seconds": seconds, "at": None if finished else iso_time(start + seconds), "finished": finished,
            "runs": per_run,
            "workers": workers, "workers_alive": alive, "training_seconds": training, "allowance": allowance}


# -- collaborative runs (docs/collaborative.md) ----------------------------------------------------

BYTES_RULE = ("uploaded: per done round, the changes it closed with, its global weights and its outer momentum; "
              "downloaded: per done round, the outer step's reads (those changes, and the round before's weights "
              "and momentum) and, when a round follows, each replica's read of the new weights; as the protocol "
              "moves them, one copy per reader (checkpoints, caches and duplicate outer steps not counted)")


def _round_validation(row: dict) -> dict:
    v = json.loads(row["validation"]) if row.get("validation") else {}
    return {k: v.get(k) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}


def _round_bytes(rows: list[dict], record: dict) -> dict[int, tuple[int, int]]:
    """Returns round -> (uploaded, downloaded) bytes of each done round (BYTES_RULE)."""
    out, before = {}, None
    for row in rows:
        if row["state"] != "done":
            before = None
            continue
        changes, weights, momentum = row["change_bytes"] or 0, row["weights_size"] or 0, row["momentum_size"] or 0
        down = changes + (0 if before is None else (before["weights_size"] or 0) + (before["momentum_size"] or 0))
        if row["round"] + 1 < record["rounds"]:
            down += record["replicas"] * weights
        out[row["round"]] = (changes + weights + momentum, down)
        before = row
    return out


def collaborative_steps(record: dict, rounds: list[dict], units: list[dict]) -> int:
    """Returns a collaborative run's progress in each replica's steps (what its steps_total counts):
    a closed or done round in full, an open round by the mean of its replicas' steps in it."""
    steps = 0
    by_round: dict[int, list[dict]] = {}
    for u in units:
        by_round.setdefault(u["round"], []).append(u)
    for row in rounds:
        members = by_round.get(row["round"], [])
        if not members:
            continue
        length = members[0]["end_step"] - members[0]["start_step"]
        if row["state"] in ("closed", "done"):
            steps += length
        elif row["state"] == "open":
            reached = [length if u["state"] == "done" else max(0, u["step_reached"] - u["start_step"]) for u in members]
            steps += sum(reached) // max(1, record["replicas"])
    return min(steps, record["steps_per_replica"])


def collaborative_figures(record: dict, rounds: list[dict], units: list[dict], as_of: float | None) -> dict:
    """Returns a collaborative run's rounds for the status object: how many are done, the current
    round's replicas (who trains each, the step reached) and stragglers, the global model's
    validation per round, and the bytes the rounds exchanged.

    `record` is the plan's record of the run (Ledger.collaborative), `rounds` its rounds rows,
    `units` its (round, replica) rows of `chunks`; times are the store's.
    """
    done = [r for r in rounds if r["state"] == "done"]
    per_round = _round_bytes(rounds, record)
    current_row = next((r for r in rounds if r["state"] != "done"), None)
    current = None
    if current_row is not None:
        members = sorted((u for u in units if u["round"] == current_row["round"]), key=lambda u: u["replica"])
        done_times = [u["done_time"] for u in members if u["state"] == "done" and u["done_time"] is not None]
        opened = current_row["opened_time"]
        open_seconds = None if opened is None or as_of is None else max(0.0, as_of - opened)
        first_done = min(done_times, default=None)
        straggling = current_row["state"] == "open" and bool(done_times)
        replicas, stragglers = [], []
        for u in members:
            length = u["end_step"] - u["start_step"]
            entry = {"replica": u["replica"], "worker": u["owner"], "state": u["state"], "step": u["step_reached"],
                     "round_steps_done": length if u["state"] == "done" else max(0, u["step_reached"] - u["start_step"]),
                     "round_steps": length, "done_at": iso_time(u["done_time"]),
                     "straggler": straggling and u["state"] != "done"}
            replicas.append(entry)
            if entry["straggler"]:
                stragglers.append({**{k: entry[k] for k in ("replica", "worker", "state", "step", "round_steps_done",
                                                             "round_steps")},
                                   "open_seconds": open_seconds,
                                   "behind_seconds": None if as_of is None else max(0.0, as_of - first_done)})
        timeout = record.get("round_timeout_minutes")
        current = {"round": current_row["round"], "state": current_row["state"],
                   "start_step": members[0]["start_step"] if members else None,
                   "end_step": members[0]["end_step"] if members else None,
                   "opened_at": iso_time(opened), "open_seconds": open_seconds,
                   # the timeout runs from the round's first claim (ledger/fold.py, _on_close)
                   "timeout_at": None if current_row.get("started_time") is None or timeout is None
                   else iso_time(current_row["started_time"] + timeout * 60),
                   "changes_in": len(done_times), "closed_by": current_row["closed_by"],
                   "replicas": replicas, "stragglers": stragglers}
    history = []
    for r in done:
        members = [u for u in units if u["round"] == r["round"]]
        up, down = per_round[r["round"]]
        history.append({"round": r["round"], "step": max((u["end_step"] for u in members), default=None),
                        **_round_validation(r), "closed_by": r["closed_by"],
                        "replicas": json.loads(r["replicas"] or "[]"), "outer_worker": r["outer_worker"],
                        "done_time": r["done_time"], "uploaded_bytes": up, "downloaded_bytes": down})
    latest = next((h for h in reversed(history) if h["psnr"] is not None), None)
    uploaded, downloaded = sum(u for u, _ in per_round.values()), sum(d for _, d in per_round.values())
    return {
        "replicas": record["replicas"], "min_replicas": record.get("min_replicas", record["replicas"]),
        "sync_every": record["sync_every"], "steps_per_replica": record["steps_per_replica"],
        "round_timeout_minutes": record.get("round_timeout_minutes"),
        "rounds_total": record["rounds"], "rounds_done": len(done),
        "current": current,
        "validation": None if latest is None else {k: latest[k] for k in ("round", "step", "psnr", "ssim",
                                                                           "bicubic_psnr", "bicubic_ssim")},
        "history": history,
        "bytes": {"uploaded": uploaded, "downloaded": downloaded, "total": uploaded + downloaded,
                  "changes": sum(r["change_bytes"] or 0 for r in done),
                  "weights": sum(r["weights_size"] or 0 for r in done),
                  "momentum": sum(r["momentum_size"] or 0 for r in done), "rule": BYTES_RULE},
    }

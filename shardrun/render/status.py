"""Rich renderings of plan reports and status objects for the terminal (the CLI prints them)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from shardrun.units import compact, human_bytes, human_duration, iso_time


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _runs_table(status: dict) -> Table:
    runs = Table(title="Runs", title_justify="left")
    for col in ("run", "model", "compute", "steps done", "%", "epochs", "chunks w/r/run/done", "loss",
                "best loss (step)", "lr",
                "val PSNR dB (bicubic)", "val SSIM (bicubic)", "ETA"):
        runs.add_column(col, justify="left" if col in ("run", "model", "compute") else "right")
    for r in status["runs"]:
        c = r["chunks"]
        pct = 100 * r["steps_done"] / r["steps_total"] if r["steps_total"] else 0
        loss, val = r.get("loss") or {}, run_validation(r)
        runs.add_row(r["name"], f"{r['model']} x{r['scale']}", compute_label(r), f"{compact(r['steps_done'])}/{compact(r['steps_total'])}",
                     f"{pct:.1f}", f"{compact(r['epochs_done'])}/{compact(r['epochs'])}",
                     f"{c['waiting']}/{c['ready']}/{c['running']}/{c['done']}" + dropped_note(c),
                     _num(loss.get("current"), ".4g"),
                     "–" if loss.get("best") is None else f"{loss['best']:.4g} ({compact(loss['best_step'])})",
                     _num((r.get("learning_rate") or {}).get("current"), ".3g"),
                     "–" if val is None else f"{val['psnr']:.2f} ({val['bicubic_psnr']:.2f})",
                     "–" if val is None else f"{val['ssim']:.4f} ({val['bicubic_ssim']:.4f})",
                     run_eta(status, r))
    return runs


MAX_ROUNDS_SHOWN = 10  # the latest rounds in the terminal's table (the JSON and the page have all)


def replica_state(replica: dict) -> str:
    """Returns a replica's state in its round for people: a straggler says so."""
    return f"{replica['state']} (straggler)" if replica["straggler"] else replica["state"]


def collaborative_summary(run: dict) -> str:
    """Returns one line on a collaborative run's rounds: done, the current one, bytes exchanged."""
    c = run["collaborative"]
    line = (f"Collaborative run {run['name']}: {c['replicas']} replicas, {c['rounds_done']:,} of "
            f"{c['rounds_total']:,} rounds done ({c['sync_every']:,} inner steps a round)")
    cur = c["current"]
    if cur is not None:
        line += f"; round {cur['round']} {cur['state']}"
        if cur["state"] == "open":
            line += (f" for {human_duration(cur['open_seconds'])}, {cur['changes_in']} of {c['replicas']} "
                     f"changes in")
        elif cur["state"] == "closed":
            line += f" ({cur['closed_by']}), waiting for its outer step"
    b = c["bytes"]
    line += (f"; exchanged {human_bytes(b['total'])} ({human_bytes(b['uploaded'])} up, "
             f"{human_bytes(b['downloaded'])} down)")
    if c["validation"] is not None:
        v = c["validation"]
        line += f"; global model after round {v['round']}: {v['psnr']:.2f} dB (bicubic {v['bicubic_psnr']:.2f})"
    return line + "."


def straggler_text(run: dict, s: dict) -> str:
    """Returns a line on one straggler of a collaborative run's current round."""
    return (f"Straggler: run {run['name']} round {run['collaborative']['current']['round']} replica {s['replica']} "
            f"({s['worker'] or 'no worker'}, {s['state']}, {s['round_steps_done']:,} of {s['round_steps']:,} "
            f"steps) keeps the round open: {human_duration(s['open_seconds'])} since it opened, "
            f"{human_duration(s['behind_seconds'])} since the first change came in (store time).")


def collaborative_view(run: dict) -> list:
    """Returns a collaborative run's line, its current round's replicas and its latest rounds."""
    c = run["collaborative"]
    parts: list = [Text(collaborative_summary(run), style="bold")]
    cur = c["current"]
    if cur is not None and cur["replicas"]:
        table = Table(title=f"{run['name']}: round {cur['round']} (steps {cur['start_step']:,}-{cur['end_step']:,})",
                      title_justify="left")
        for col in ("replica", "worker", "state", "step", "round steps"):
            table.add_column(col, justify="left" if col in ("worker", "state") else "right")
        for r in cur["replicas"]:
            table.add_row(str(r["replica"]), r["worker"] or "–", replica_state(r), f"{r['step']:,}",
                          f"{r['round_steps_done']:,}/{r['round_steps']:,}",
                          style="yellow" if r["straggler"] else None)
        parts.append(table)
        parts.extend(Text(straggler_text(run, s), style="yellow") for s in cur["stragglers"])
    if c["history"]:
        shown = c["history"][-MAX_ROUNDS_SHOWN:]
        title = f"{run['name']}: rounds done" + (f" (the latest {len(shown)})" if len(shown) < len(c["history"]) else "")
        table = Table(title=title, title_justify="left")
        for col in ("round", "step", "closed by", "replicas", "global PSNR dB (bicubic)", "SSIM", "up", "down",
                    "done at"):
            table.add_column(col, justify="left" if col in ("closed by", "replicas", "done at") else "right")
        for h in shown:
            table.add_row(str(h["round"]), _num(h["step"], ","), h["closed_by"] or "–",
                          ",".join(map(str, h["replicas"])),
                          "–" if h["psnr"] is None else f"{h['psnr']:.2f} ({h['bicubic_psnr']:.2f})",
                          _num(h["ssim"], ".4f"), human_bytes(h["uploaded_bytes"]), human_bytes(h["downloaded_bytes"]),
                          iso_time(h["done_time"]) or "–")
        parts.append(table)
    return parts


def dropped_note(chunks: dict) -> str:
    """Returns a collaborative run's units dropped from their rounds, for its chunks cell ("" if none)."""
    return f" (+{chunks['dropped']} dropped)" if chunks.get("dropped") else ""


def worker_work(status: dict, w: dict) -> str:
    """Returns what a worker trains for its run/chunk cell: run/chunk, or a collaborative run's
    unit as run round/replica ("c r2/1")."""
    if w["run"] is None:
        return "–"
    run = next((r for r in status["runs"] if r["name"] == w["run"]), None)
    collab = (run or {}).get("collaborative")
    if collab and w["chunk"] is not None:
        return f"{w['run']} r{w['chunk'] // collab['replicas']}/{w['chunk'] % collab['replicas']}"
    return f"{w['run']}/{w['chunk']}"


def compute_label(run: dict) -> str:
    """Returns a run's precision, XLA and determinism compactly ("fp32 · det"), or "–" in a status
    object from before these fields."""
    return (run.get("training") or {}).get("label", "–")


def training_left(eta: dict) -> str:
    """Returns the training left for one worker, as the ETA line says it while no worker runs."""
    if eta["training_seconds"] is None:
        return "throughput unknown for some run"
    return f"{human_duration(eta['training_seconds'])} of training left for one worker"


def run_done(run: dict) -> bool:
    """Returns whether a run is done: every step trained; a collaborative run's last outer step too."""
    collab = run.get("collaborative")
    if collab:
        return collab["rounds_done"] >= collab["rounds_total"]
    return run["steps_done"] >= run["steps_total"]


def run_validation(run: dict) -> dict | None:
    """Returns the validation a run's table row shows: a collaborative run's global model's (its
    latest round with a validation), not a replica's; a plain run's latest."""
    collab = run.get("collaborative")
    return collab["validation"] if collab else run.get("validation")


def run_eta(status: dict, run: dict) -> str:
    """Returns a run's cell in the ETA column: done, none while no worker runs, or its time left."""
    if run_done(run):
        return "done"
    return "no worker" if not status["eta"]["workers_alive"] else human_duration(run.get("eta_seconds"))


def _eta_text(eta: dict) -> Text:
    if eta["finished"]:
        return Text("ETA: every run is done.", style="bold green")
    if not eta["workers_alive"]:
        return Text(f"ETA: none while no worker is running ({training_left(eta)}).", style="yellow")
    if eta["seconds"] is None:
        return Text("ETA: unknown (no throughput measured or planned for some run).", style="yellow")
    a = eta["allowance"]
    alive = eta["workers_alive"]
    workers = f"{alive} worker{'s' if alive != 1 else ''} alive"
    lost = (f"{a['expired_attempts']:,} of {a['ended_attempts']:,} chunk attempts ended by lease expiry, losing "
            f"{human_duration(a['lost_seconds'])} of {human_duration(a['worked_seconds'])} worked"
            if a["ended_attempts"] else "no chunk attempt has ended yet")
    return Text(f"ETA: {human_duration(eta['seconds'])} (about {eta['at']}, store time), from recent throughput "
                f"with {workers}; allowance for lost sessions +{(a['factor'] - 1) * 100:.1f}% ({lost}).", style="bold")


def worker_state(w: dict) -> str:
    """Returns a worker's state for people: with the reason it gave when it left."""
    return f"{w['state']} ({w['left_reason']})" if w.get("left_reason") else w["state"]


def _workers_table(status: dict) -> Table:
    table = Table(title="Workers (seen in the last day, by store time)", title_justify="left")
    for col in ("worker", "account", "platform", "device", "run/chunk", "step", "patches/s", "steps/s",
                "last seen", "silent", "state"):
        table.add_column(col, justify="right" if col in ("step", "patches/s", "steps/s", "silent") else "left")
    for w in status["workers"]:
        state = Text(worker_state(w), style={"stale": "bold red", "ended": "dim"}.get(w["state"], "green"))
        table.add_row(w["id"], w["account"] or "?", w["platform"] or "?", w["device"] or "unknown",
                      worker_work(status, w),
                      "–" if w["step"] is None else f"{w['step']:,}", _num(w["patches_per_second"], ",.1f"),
                      _num(w["steps_per_second"], ",.3g"), w["last_seen"] or "–",
                      human_duration(w["silent_seconds"]), state)
    return table


def _sessions_text(sessions: dict) -> Text:
    if not sessions["count"]:
        return Text("Sessions: none yet.")
    ends = ", ".join(f"{n} {k}" for k, n in sessions["ended"].items() if n)
    return Text(f"Sessions: {sessions['count']:,} so far ({ends}); length median "
                f"{human_duration(sessions['median_seconds'])}, mean {human_duration(sessions['mean_seconds'])}, "
                f"longest {human_duration(sessions['longest_seconds'])}; "
                f"total {human_duration(sessions['total_seconds'])} (store time).")


def _hardware_table(status: dict) -> Table:
    table = Table(title="Throughput by hardware (mean of the reports)", title_justify="left")
    for col in ("device", "platform", "run", "patches/s", "steps/s", "one epoch", "reports"):
        table.add_column(col, justify="left" if col in ("device", "platform", "run") else "right")
    for h in status["hardware"]:
        table.add_row(h["device"], h["platform"], h["run"], f"{h['patches_per_second']:,.1f}",
                      f"{h['steps_per_second']:,.3g}", human_duration(h["epoch_seconds"]), f"{h['samples']:,}")
    return table


def status_view(status: dict) -> Group:
    """Returns the printed form of a status object: runs, ETA, workers, sessions, accounts, notes."""
    parts = []
    plan = status["plan"]
    if plan:
        parts.append(Text(f"Job {status['job']}: plan {plan['id']} of {plan['planned_at']}, "
                          f"{plan['images']:,} images, {plan['rejected']:,} rejected", style="bold"))
        if plan.get("validation"):
            parts.append(Text(f"Validation: {plan['validation']['images']:,} images, {plan['validation']['name']}"))
    if status.get("as_of"):
        parts.append(Text(f"As of the journal's latest event: {status['as_of']} (store time); "
                          f"{status['journal']['events']:,} events."))
    parts.append(_runs_table(status))
    for run in status["runs"]:
        if run.get("collaborative"):
            parts.extend(collaborative_view(run))
    if status.get("eta"):
        parts.append(_eta_text(status["eta"]))
    if status.get("workers"):
        parts.append(_workers_table(status))
    if status.get("sessions"):
        parts.append(_sessions_text(status["sessions"]))
    if status.get("hardware"):
        parts.append(_hardware_table(status))
    accounts = Table(title="Accounts", title_justify="left")
    for col in ("account", "used", "quota", "%", "shards", "shard bytes"):
        accounts.add_column(col, justify="left" if col == "account" else "right")
    for a in status["accounts"]:
        used = a["used_bytes"]
        pct = f"{100 * used / a['quota_bytes']:.1f}" if used is not None and a["quota_bytes"] else "?"
        accounts.add_row(a["name"], human_bytes(used) if a["reachable"] is not False else "unknown (unreachable)",
                         human_bytes(a["quota_bytes"]), pct, str(a["shards"]), human_bytes(a["placed_bytes"]))
    parts.append(accounts)
    for a in status["accounts"]:
        if a["reachable"] is False:
            parts.append(Text(f"Account {a['name']}: usage unknown, the store could not be reached ({a['error']})",
                              style="yellow"))
    bad = status["journal"]["unreadable"]
    if bad:
        shown = "; ".join(f"{b['id']}: {b['reason']}" for b in bad[:3])
        parts.append(Text(f"{len(bad)} bad journal event(s), skipped by every reader: {shown}"
                          + (" …" if len(bad) > 3 else ""), style="yellow"))
    for note in status["notes"]:
        parts.append(Text(f"Note: {note}", style="yellow"))
    return Group(*parts)

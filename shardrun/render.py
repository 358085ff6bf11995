"""Rich renderings of plan reports and status objects for the terminal (the CLI prints them)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from shardrun.coordinator import PlanReport

MAX_REJECTED_SHOWN = 50


def human_bytes(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return f"{n} TB"


def human_hours(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.1f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days ({hours:.0f} h)"


def rejected_table(rejected: list, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("file")
    table.add_column("reason")
    for item in rejected[:MAX_REJECTED_SHOWN]:
        path, reason = (item["path"], item["reason"]) if isinstance(item, dict) else (item.path, item.reason)
        table.add_row(Text(path), Text(reason))
    if len(rejected) > MAX_REJECTED_SHOWN:
        table.add_row(f"… and {len(rejected) - MAX_REJECTED_SHOWN} more", "(all of them: `shardrun status --json`)")
    return table


def plan_view(report: PlanReport) -> Group:
    """Returns the printed form of a plan: data, shards per account, runs, estimates."""
    parts = [Text(f"Dataset: {report.scan.summary()}", style="bold")]
    if report.scan.rejected:
        parts.append(rejected_table(report.scan.rejected, "Rejected files"))

    accounts = Table(title="Shards per account", title_justify="left")
    for col in ("account", "shards", "shard bytes", "uploaded now", "used before", "quota", "free after"):
        accounts.add_column(col, justify="left" if col == "account" else "right")
    for a in report.accounts:
        accounts.add_row(a.name, str(a.shards), human_bytes(a.shard_bytes), human_bytes(a.uploaded_bytes),
                         human_bytes(a.used_before), human_bytes(a.quota_bytes), human_bytes(a.free_after))
    parts.append(accounts)

    runs = Table(title=f"Runs (platform {report.platform.name}: sessions of "
                       f"{report.platform.session_hours or 'unlimited'} h)", title_justify="left")
    for col in ("run", "model", "steps/epoch", "steps", "chunks", "patches/s", "throughput from", "GPU time"):
        runs.add_column(col, justify="left" if col in ("run", "model", "throughput from") else "right")
    for r in report.runs:
        runs.add_row(r.run.name, f"{r.run.model} x{r.run.scale}", f"{r.steps_per_epoch:,}", f"{r.steps_total:,}",
                     str(len(r.chunks)), f"{r.patches_per_second:,.4g}", r.throughput_source,
                     human_hours(r.train_seconds / 3600))
    parts.append(runs)

    est = report.estimate
    parts.append(Text(
        f"Estimate: {est.gpu_hours:,.1f} GPU-hours of training, {est.sessions} sessions "
        f"({est.session_hours:,.1f} h with start-up), {human_hours(est.calendar_hours)} of calendar time "
        f"with {est.workers} worker{'s' if est.workers > 1 else ''} in parallel."))
    for note in report.notes:
        parts.append(Text(f"Note: {note}", style="yellow"))
    if report.dry_run:
        parts.append(Text("Dry run: nothing was written to any store.", style="bold"))
    elif report.written:
        parts.append(Text(f"Plan {report.plan_id} written to the journal of account {report.job.home.name}.",
                          style="bold green"))
    else:
        parts.append(Text(f"Already planned as {report.plan_id}: every shard is in place; nothing to do.",
                          style="bold"))
    return Group(*parts)


def status_view(status: dict) -> Group:
    """Returns the printed form of a status object: runs, accounts, notes."""
    parts = []
    plan = status["plan"]
    if plan:
        parts.append(Text(f"Job {status['job']}: plan {plan['id']} of {plan['planned_at']}, "
                          f"{plan['images']:,} images, {plan['rejected']:,} rejected", style="bold"))
    runs = Table(title="Runs", title_justify="left")
    for col in ("run", "model", "steps done", "of", "%", "epochs", "waiting", "ready", "running", "done"):
        runs.add_column(col, justify="left" if col in ("run", "model") else "right")
    for r in status["runs"]:
        c = r["chunks"]
        pct = 100 * r["steps_done"] / r["steps_total"] if r["steps_total"] else 0
        runs.add_row(r["name"], f"{r['model']} x{r['scale']}", f"{r['steps_done']:,}", f"{r['steps_total']:,}",
                     f"{pct:.1f}", f"{r['epochs_done']:.2f}/{r['epochs']}",
                     str(c["waiting"]), str(c["ready"]), str(c["running"]), str(c["done"]))
    parts.append(runs)
    accounts = Table(title="Accounts", title_justify="left")
    for col in ("account", "used", "quota", "%", "shards", "shard bytes"):
        accounts.add_column(col, justify="left" if col == "account" else "right")
    for a in status["accounts"]:
        used = a["used_bytes"]
        pct = f"{100 * used / a['quota_bytes']:.1f}" if used is not None and a["quota_bytes"] else "?"
        accounts.add_row(a["name"], human_bytes(used) if a["reachable"] is not False else "unreachable",
                         human_bytes(a["quota_bytes"]), pct, str(a["shards"]), human_bytes(a["placed_bytes"]))
    parts.append(accounts)
    bad = status["journal"]["unreadable"]
    if bad:
        parts.append(Text(f"{len(bad)} journal object(s) could not be read, e.g. {bad[0]['key']}: "
                          f"{bad[0]['reason']}", style="yellow"))
    for note in status["notes"]:
        parts.append(Text(f"Note: {note}", style="yellow"))
    return Group(*parts)

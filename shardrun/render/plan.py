"""The plan report (shardrun.plan.job.PlanReport) as rich tables for the terminal."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from shardrun.plan.job import PlanReport
from shardrun.units import human_bytes, human_duration


MAX_REJECTED_SHOWN = 50


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


def collaborative_table(name: str, record: dict) -> Group:
    """Returns a collaborative run's rounds and each replica's part (plan/parts.collaborative_record)."""
    line = Text(f"Collaborative run {name}: {record['replicas']} replicas, {record['rounds']} rounds of "
                f"{record['sync_every']:,} inner steps each (outer Nesterov step: lr {record['outer_lr']:g}, momentum "
                f"{record['outer_momentum']:g}); a round needs {record['min_replicas']} replicas' changes and waits "
                f"at most {human_duration(record['round_timeout_minutes'] * 60)} of store time for them.")
    table = Table(title=f"Replicas of {name}: each downloads only its part", title_justify="left")
    for col in ("replica", "images", "shards", "bytes", "accounts"):
        table.add_column(col, justify="left" if col == "accounts" else "right")
    for part in record["parts"]:
        table.add_row(str(part["replica"]), f"{part['images']:,}", str(len(part["shards"])),
                      human_bytes(part["bytes"]), ", ".join(part["accounts"]))
    return Group(line, table)


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
        each = f" x{r.replicas}" if r.run.collaborative is not None else ""  # each replica's, side by side
        runs.add_row(r.run.name, f"{r.run.model} x{r.run.scale}", f"{r.steps_per_epoch:,}", f"{r.steps_total:,}{each}",
                     f"{len(r.chunks)}{each}", f"{r.patches_per_second:,.4g}", r.throughput_source,
                     human_duration(r.train_seconds * r.replicas))
    parts.append(runs)
    for name, record in report.collaborative.items():
        parts.append(collaborative_table(name, record))

    est = report.estimate
    parts.append(Text(
        f"Estimate: {est.gpu_hours:,.1f} GPU-hours of training, {est.sessions} sessions "
        f"({human_duration(est.session_hours * 3600)} with start-up), {human_duration(est.calendar_hours * 3600)} of calendar time "
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

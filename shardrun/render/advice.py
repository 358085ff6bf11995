"""The advice (shardrun.advice.roadmap) as rich tables for the terminal; the CLI prints them."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from shardrun.config.paper import PAPER
from shardrun.advice.roadmap import Advice
from shardrun.units import human_bytes, human_duration

COMPACT_RENTALS = 3  # rentals shown in plan's advice section; `shardrun advise` shows them all


def _gpu_hours(hours: float) -> str:
    """Returns a number of GPU-hours for a column of numbers: three decimals below one, none from 100."""
    return f"{hours:,.3f}" if hours < 1 else f"{hours:,.2f}" if hours < 100 else f"{hours:,.0f}"


def _yes(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


def _free_line(advice: Advice) -> Text:
    free = advice.free
    needed = free.accounts_needed if free.accounts_needed is not None else "more"
    verdict = ("fits in 12-hour pieces and 15 GB per account" if free.fits else
               "does not fit in 12-hour pieces and 15 GB per account")
    line = Text(f"Free sessions on {free.platform} ({free.gpu}): {free.sessions} session"
                f"{'s' if free.sessions != 1 else ''} of at most {free.session_hours:g} h, {needed} of the team's "
                f"{free.team_accounts} accounts of {free.quota_gb:g} GB, {human_duration(free.calendar_hours * 3600)} with "
                f"{free.workers} worker{'s' if free.workers != 1 else ''}: {verdict}.")
    if advice.deadline_hours is not None and free.fits and not free.meets_deadline:
        line.append(" Misses the deadline.", style="yellow")
    return line


def collaborative_line(advice: Advice, c) -> Text:
    """Returns the line on a collaborative run's rounds with the team's workers (free sessions)."""
    turns = ("side by side, one worker each" if c.turns_per_round == 1 else
             f"{c.turns_per_round} turns a round, {c.replicas} replicas on {c.workers} worker"
             f"{'s' if c.workers != 1 else ''}")
    line = Text(f"  Collaborative run {c.name}: {c.replicas} replicas train at once, {c.rounds:,} rounds of "
                f"{c.sync_every:,} steps ({human_duration(c.round_hours * 3600)} a round on {advice.free.gpu}), "
                f"{_gpu_hours(c.gpu_hours)} GPU-hours for all replicas; {turns}: "
                f"{human_duration(c.calendar_hours * 3600)}")
    if c.turns_per_round > 1:
        line.append(f" ({human_duration(c.side_by_side_hours * 3600)} with {c.replicas} workers)", style="yellow")
    line.append(".")
    return line


def _rent_table(advice: Advice, compact: bool) -> Table:
    rentals = [r for r in advice.rent if not r.historical]
    if compact:
        rentals = sorted(rentals, key=lambda r: r.cost_usd)[:COMPACT_RENTALS]
    else:
        rentals += [r for r in advice.rent if r.historical]
    title = f"Renting (cheapest {len(rentals)})" if compact else "Renting (per GPU-hour, on demand)"
    table = Table(title=title, title_justify="left")
    columns = ["provider", "GPU", "$/h", "price date", "GPU-hours", "cost", "calendar"]
    if advice.deadline_hours is not None:
        columns.append("in time")
    for col in columns:
        table.add_column(col, justify="left" if col in ("provider", "GPU", "price date") else "right")
    for r in rentals:
        row = [r.provider, r.gpu, f"{r.usd_per_hour:.3f}", f"{r.date} (paper)" if r.historical else r.date,
               _gpu_hours(r.hours), f"${r.cost_usd:,.2f}", human_duration(r.calendar_hours * 3600)]
        if advice.deadline_hours is not None:
            row.append(_yes(r.meets_deadline))
        table.add_row(*row, style="dim" if r.historical else None)
    return table


def _buy_table(advice: Advice) -> Table:
    table = Table(title="Buying (graphics card only)", title_justify="left")
    columns = ["item", "GPU", "price", "price date", "GPU-hours", "calendar", "break-even", "cheaper than renting"]
    if advice.deadline_hours is not None:
        columns.append("in time")
    for col in columns:
        table.add_column(col, justify="left" if col in ("item", "GPU", "price date") else "right")
    for b in advice.buy:
        row = [b.item, b.gpu, f"${b.usd:,.0f}", b.date, _gpu_hours(b.hours), human_duration(b.calendar_hours * 3600),
               f"{b.break_even_hours:,.0f} h" if b.break_even_hours is not None else "-",
               _yes(b.cheaper_than_renting)]
        if advice.deadline_hours is not None:
            row.append(_yes(b.meets_deadline))
        table.add_row(*row)
    return table


def advice_view(advice: Advice, compact: bool = False) -> Group:
    """Returns the printed advice: the work, free sessions, renting, buying, the recommendation.

    `compact` (plan's advice section) shows only the cheapest rentals and no per-run lines.
    """
    work = advice.work
    parts = [Text(f"Advice (the roadmap of {PAPER}; prices from {advice.prices})", style="bold"),
             Text(f"Work: {_gpu_hours(work.gpu_hours)} GPU-hours of training on {work.gpu} (profile {work.profile}); "
                  f"{work.images:,} images, {human_bytes(work.dataset_bytes)}.")]
    if advice.deadline_hours is not None:
        parts.append(Text(f"Deadline: {human_duration(advice.deadline_hours * 3600)}."))
    parts.append(_free_line(advice))
    parts.extend(collaborative_line(advice, c) for c in advice.collaborative)
    if not compact:
        for run in advice.free.runs:
            parts.append(Text(f"  {run.name}: one epoch takes {human_duration(run.epoch_hours * 3600)} on {advice.free.gpu}; "
                              f"{run.epochs_per_session:.1f} epochs per {advice.free.session_hours:g}-hour session "
                              f"({run.epochs_per_usable_session:.1f} in its usable training time); "
                              f"{run.chunks} chunk{'s' if run.chunks != 1 else ''}."))
    parts.append(_rent_table(advice, compact))
    if advice.buy:
        parts.append(_buy_table(advice))
    rec = advice.recommendation
    if rec.kind == "none":
        parts.append(Text(f"Recommendation: none meets the deadline. {rec.reason}.", style="bold yellow"))
    else:
        parts.append(Text(f"Recommendation: {rec.option}.", style="bold green"))
        parts.append(Text(f"Why: {rec.reason}."))
    for note in advice.notes:
        parts.append(Text(f"Note: {note}.", style="yellow"))
    parts.append(Text("Free sessions mean each team member's own sessions and storage, never extra accounts "
                      "(docs/responsible-use.md).", style="dim"))
    return Group(*parts)

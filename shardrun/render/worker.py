"""A worker's progress (shardrun.worker.WorkerProgress): a live panel for a terminal or a notebook
cell, and one plain line for a log file or a pipe."""

from __future__ import annotations

from rich.table import Table

from shardrun.units import human_duration


def _fields(p) -> list[tuple[str, str]]:
    """Returns the (label, value) pairs both views show, in order."""
    rows = [("doing", p.activity)]
    if p.run is not None:
        rows.append(("chunk", f"{p.run} chunk {p.chunk}"))
    if p.step is not None:
        rows.append(("step", f"{p.step:,} of {p.end_step:,}" if p.end_step is not None else f"{p.step:,}"))
    if p.loss is not None:
        rows.append(("loss", f"{p.loss:.5f}"))
    if p.patches_per_second is not None:
        rows.append(("patches/s", f"{p.patches_per_second:,.0f}"))
    if p.psnr is not None and p.bicubic_psnr is not None:
        rows.append(("validation", f"{p.psnr:.2f} dB vs bicubic {p.bicubic_psnr:.2f} dB "
                                   f"({p.psnr - p.bicubic_psnr:+.2f}) at step {p.validation_step:,}"
                     if p.validation_step is not None else
                     f"{p.psnr:.2f} dB vs bicubic {p.bicubic_psnr:.2f} dB ({p.psnr - p.bicubic_psnr:+.2f})"))
    if p.next_checkpoint_s is not None:
        rows.append(("next checkpoint", f"in {human_duration(p.next_checkpoint_s)}"))
    rows.append(("session left", "no deadline" if p.seconds_left is None else human_duration(max(0.0, p.seconds_left))))
    return rows


def progress_panel(p) -> Table:
    """Returns the live display's table: one labelled row per figure the worker knows."""
    table = Table(title=f"shardrun worker {p.worker}", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for label, value in _fields(p):
        table.add_row(label, value)
    return table


def progress_line(p) -> str:
    """Returns the same figures on one line (the caller puts the time in front)."""
    return "; ".join(f"{label} {value}" for label, value in _fields(p))

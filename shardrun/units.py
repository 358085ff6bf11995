"""One spelling for the quantities people read: bytes, durations and times.

Bytes are decimal (kB, MB, GB: Drive counts quota in decimal gigabytes, and so do we).
"""

from __future__ import annotations


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


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds:.0f} s" if seconds < 60 else human_hours(seconds / 3600)


def compact(n: float) -> str:
    """Returns a count short enough for a table cell: 12,345 or 370.8M."""
    if abs(n) < 100_000:
        return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.2f}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.4g}{unit}"
    return f"{n:,.0f}"


def short_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"

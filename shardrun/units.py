"""One spelling for the quantities people read: bytes, durations and times.

Bytes are decimal (kB, MB, GB: Drive counts quota in decimal gigabytes, and so do we), with two
decimals above a kilobyte. Durations take the largest unit that reads naturally: whole seconds
under a minute, whole minutes under an hour, hours with one decimal under two days, then days.
Times are ISO 8601 in UTC, to the second.
"""

from __future__ import annotations

from datetime import datetime, timezone

_DURATION_UNITS = ((60, 1, "s", 0), (60, 60, "min", 0), (48, 3600, "h", 1))


def human_bytes(n: float | None) -> str:
    """Returns a byte count to read: `999 B`, `1.00 kB`, `15.00 GB`; `unknown` for None."""
    if n is None:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        # Choose the unit after rounding, so 999.999 kB reads 1.00 MB rather than 1,000.00 kB.
        if abs(round(n, 0 if unit == "B" else 2)) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """Returns a duration to read: `59 s`, `12 min`, `1.5 h`, `3.2 days`; `unknown` for None."""
    if seconds is None:
        return "unknown"
    for below, size, unit, decimals in _DURATION_UNITS:
        # Choose the unit after rounding, so 59.7 s reads 1 min rather than 60 s.
        if abs(round(seconds / size, decimals)) < below:
            return f"{seconds / size:.{decimals}f} {unit}"
    return f"{seconds / 86400:,.1f} days"


def iso_time(seconds: float | None) -> str | None:
    """Returns a POSIX time as ISO 8601 in UTC to the second (`2024-05-01T12:00:00+00:00`), or None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def compact(n: float) -> str:
    """Returns a count short enough for a table cell: 12,345 or 370.8M."""
    if abs(n) < 100_000:
        return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.2f}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.4g}{unit}"
    return f"{n:,.0f}"

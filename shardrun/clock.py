"""Time as an injected object, so deadlines, leases and heartbeats are tested without sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (this machine's; never compared across machines)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards, for measuring durations."""

    def sleep(self, seconds: float) -> None:
        """Waits `seconds` (a fake clock just advances)."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class FakeClock:
    """A clock that moves only when told to (or when something sleeps on it)."""

    def __init__(self, start: float = 1_700_000_000.0):
        self._now = float(start)
        self._mono = 0.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

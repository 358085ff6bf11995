"""Time as an injected object, so deadlines, leases and heartbeats are tested without sleeping."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (this machine's; never compared across machines)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards, for measuring durations."""

    def sleep(self, seconds: float) -> None:
        """Waits `seconds` (a fake clock just advances)."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Waits until `event` is set or `seconds` have passed on this clock; returns whether it
        is set. A background thread waits so (the worker's heartbeats): on a fake clock it wakes
        only when something advances the clock, so tests drive it step by step."""


def wait_on(clock, event: threading.Event, seconds: float) -> bool:
    """Returns `clock.wait(event, seconds)`, or waits in real time on a clock that has no `wait`."""
    wait = getattr(clock, "wait", None)
    return wait(event, seconds) if wait is not None else event.wait(max(0.0, seconds))


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to (or when something sleeps on it)."""

    def __init__(self, start: float = 1_700_000_000.0):
        self._now = float(start)
        self._mono = 0.0
        self._moved = threading.Condition()

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        with self._moved:
            self._now += seconds
            self._mono += seconds
            self._moved.notify_all()

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Returns once `event` is set or the clock has been advanced by `seconds` (by any thread)."""
        until = self._mono + seconds
        with self._moved:
            while not event.is_set() and self._mono < until:
                self._moved.wait(0.01)  # event.set() does not notify: look again soon
        return event.is_set()

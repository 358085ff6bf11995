"""Where this worker runs, and when its session ends.

The deadline is the platform's rule, read — never stretched: on Colab and Kaggle a session lives
about 12 hours from the moment the machine started, which the kernel's uptime tells us; a local
machine has no limit. `--budget HOURS` sets an earlier end (a paid VM, a lab slot).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from shardrun.clock import Clock, SystemClock
from shardrun.errors import ShardrunError
from shardrun.config.platforms import Platform


@dataclass(frozen=True)
class Session:
    platform: str  # the platform detected (or "local")
    started_at: float  # this machine's clock, seconds since the epoch
    deadline: float | None  # this machine's clock; None: no limit
    source: str  # how the deadline was found, for the status line

    def seconds_left(self, clock: Clock) -> float | None:
        return None if self.deadline is None else self.deadline - clock.now()


def detect_platform(environ: Mapping[str, str]) -> str:
    """Returns the platform this process runs on, from the variables each notebook sets."""
    if "COLAB_RELEASE_TAG" in environ or "COLAB_GPU" in environ:
        return "colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in environ or "KAGGLE_URL_BASE" in environ:
        return "kaggle"
    return "local"


def machine_uptime(path: str = "/proc/uptime") -> float | None:
    """Returns seconds since this machine (or notebook VM) started, or None where unknown."""
    try:
        with open(path) as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def detect_session(platforms: dict[str, Platform], job_platform: str, budget_hours: float | None = None,
                   clock: Clock | None = None, environ: Mapping[str, str] | None = None,
                   uptime: float | None = None) -> Session:
    """Returns this session: its platform, start and deadline (the earlier of limit and budget)."""
    clock = clock or SystemClock()
    environ = os.environ if environ is None else environ
    now = clock.now()
    if budget_hours is not None and budget_hours <= 0:
        raise ShardrunError(f"--budget {budget_hours}: must be a number of hours greater than 0")
    where = detect_platform(environ)
    limit_platform = {"colab": job_platform if job_platform.startswith("colab") else "colab-free",
                      "kaggle": "kaggle"}.get(where)
    deadline, source, started = None, "no session limit", now
    if limit_platform and limit_platform in platforms and platforms[limit_platform].session_seconds:
        up = machine_uptime() if uptime is None else uptime
        started = now - (up or 0.0)
        deadline = started + platforms[limit_platform].session_seconds
        source = (f"{limit_platform}: {platforms[limit_platform].session_hours:g} h from the machine's start"
                  + ("" if up is not None else " (uptime unknown: counted from now)"))
    if budget_hours is not None and (deadline is None or now + budget_hours * 3600 < deadline):
        deadline, source = now + budget_hours * 3600, f"--budget {budget_hours:g} h"
    return Session(where, started, deadline, source)

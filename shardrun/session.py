"""Where this worker runs, and when its session ends.

The deadline is the platform's rule, read — never stretched: on Colab and Kaggle a session lives
about 12 hours from the moment the machine started, which the kernel's uptime tells us; under
SLURM the job's own end time (SLURM_JOB_END_TIME, or the time left that `squeue` reports) is the
end; a local machine or a SkyPilot VM has no limit of its own (a spot VM's preemption arrives as
SIGTERM, which the worker command handles). `--budget HOURS` sets an earlier end (a paid VM, a
lab slot).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Mapping, Sequence

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
    # SkyPilot first: it can itself provision onto a SLURM cluster, and then it is the layer the
    # person launched (the SLURM deadline still applies, see detect_session).
    if "SKYPILOT_TASK_ID" in environ or "SKYPILOT_NODE_RANK" in environ:
        return "skypilot"
    if "SLURM_JOB_ID" in environ:
        return "slurm"
    return "local"


# Runs a command and returns its standard output; raises OSError (no such binary) or
# subprocess.SubprocessError (non-zero exit, timeout). Injected so tests never call SLURM.
CommandRunner = Callable[[Sequence[str]], str]


def run_command(argv: Sequence[str], timeout: float = 15.0) -> str:
    """Returns the command's standard output (raises OSError or SubprocessError if it fails)."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=True).stdout


_NO_LIMIT = {"UNLIMITED", "INFINITE", "NONE", "NOT_SET", "UNKNOWN", "N/A", ""}


def parse_slurm_duration(text: str) -> float | None:
    """Returns seconds from SLURM's [days-][hours:]minutes:seconds (as `squeue -o %L` prints),
    or None if `text` is not one."""
    text = text.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        return None
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:
        # With days, SLURM prints days-hours[:minutes[:seconds]].
        parts += [0] * (3 - len(parts))
    else:
        # Without days: minutes:seconds or hours:minutes:seconds (a lone number is minutes).
        parts = {1: [0, parts[0], 0], 2: [0] + parts, 3: parts}[len(parts)]
    h, mnt, sec = parts
    return (int(days or 0) * 86400) + h * 3600 + mnt * 60 + sec


def parse_slurm_time(text: str) -> float | None:
    """Returns epoch seconds from SLURM's YYYY-MM-DDTHH:MM:SS (local time of the cluster, which
    is this node's), or None for Unknown, None, Unlimited or anything else."""
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def slurm_deadline(environ: Mapping[str, str], now: float,
                   runner: CommandRunner = run_command) -> tuple[float | None, str]:
    """Returns (deadline, how it was found) for the SLURM job in `environ`; the deadline is None
    when the job has no time limit or it cannot be learnt (the text then says why)."""
    job = environ.get("SLURM_JOB_ID", "").strip()
    end = environ.get("SLURM_JOB_END_TIME", "").strip()
    if end:
        try:
            value = float(end)
        except ValueError:
            value = None
        # 0 or a far-future value is how an unlimited job can read; anything not after now is no
        # usable end either (a stale variable inherited from another job).
        if value is not None and now < value < now + 366 * 86400:
            return value, f"slurm job {job}: SLURM_JOB_END_TIME"
    problems = []
    try:
        left = runner(["squeue", "-h", "-j", job, "-o", "%L"]).strip()
    except (OSError, subprocess.SubprocessError) as e:
        problems.append(f"squeue failed ({_why(e)})")
    else:
        if left.upper() in _NO_LIMIT:
            return None, f"slurm job {job}: no time limit (squeue: {left or 'empty'})"
        seconds = parse_slurm_duration(left)
        if seconds is not None:
            return now + seconds, f"slurm job {job}: {left} left (squeue)"
        problems.append(f"squeue printed {left[:40]!r}")
    try:
        shown = runner(["scontrol", "show", "job", job])
    except (OSError, subprocess.SubprocessError) as e:
        problems.append(f"scontrol failed ({_why(e)})")
    else:
        limit = re.search(r"\bTimeLimit=(\S+)", shown)
        if limit and limit.group(1).upper() in _NO_LIMIT:
            return None, f"slurm job {job}: no time limit (scontrol: TimeLimit={limit.group(1)})"
        found = re.search(r"\bEndTime=(\S+)", shown)
        value = parse_slurm_time(found.group(1)) if found else None
        if value is not None and value > now:
            return value, f"slurm job {job}: EndTime={found.group(1)} (scontrol)"
        problems.append("scontrol showed no usable EndTime" + (f" ({found.group(1)[:40]})" if found else ""))
    return None, f"slurm job {job}: end time unknown, no session limit ({'; '.join(problems)})"


def _why(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "not installed on this node"
    if isinstance(error, subprocess.CalledProcessError):
        return f"exit status {error.returncode}"
    return type(error).__name__


def machine_uptime(path: str = "/proc/uptime") -> float | None:
    """Returns seconds since this machine (or notebook VM) started, or None where unknown."""
    try:
        with open(path) as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def detect_session(platforms: dict[str, Platform], job_platform: str, budget_hours: float | None = None,
                   clock: Clock | None = None, environ: Mapping[str, str] | None = None,
                   uptime: float | None = None, runner: CommandRunner = run_command) -> Session:
    """Returns this session: its platform, start and deadline (the earlier of limit and budget).

    `runner` runs `squeue`/`scontrol` when a SLURM job's end is not in its environment.
    """
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
    if environ.get("SLURM_JOB_ID", "").strip():
        # The scheduler's end applies whatever layer launched us (SkyPilot can provision onto SLURM).
        end, how = slurm_deadline(environ, now, runner)
        if end is not None and (deadline is None or end < deadline):
            deadline, source = end, how
        elif deadline is None:
            source = how
    if budget_hours is not None and (deadline is None or now + budget_hours * 3600 < deadline):
        deadline, source = now + budget_hours * 3600, f"--budget {budget_hours:g} h"
    return Session(where, started, deadline, source)

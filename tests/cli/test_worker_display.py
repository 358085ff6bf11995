"""The worker's progress display: a live panel on a terminal (rich's recording console), plain
timestamped lines into a pipe."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from rich.console import Console

from shardrun.cli.worker import ProgressDisplay
from shardrun.render.worker import progress_line, progress_panel
from shardrun.worker import WorkerProgress

ROOT = Path(__file__).resolve().parents[2]

TRAINING = WorkerProgress("alice-host-1", "training", run="espcn-x2", chunk=3, step=1200, end_step=4000,
                          loss=0.00123, patches_per_second=5321.0, psnr=31.25, bicubic_psnr=30.0,
                          validation_step=1000, next_checkpoint_s=420.0, seconds_left=3 * 3600.0)


def test_the_panel_shows_every_figure():
    console = Console(record=True, force_terminal=True, width=100)
    console.print(progress_panel(TRAINING))
    text = console.export_text()
    for expected in ("alice-host-1", "espcn-x2 chunk 3", "1,200 of 4,000", "0.00123", "5,321",
                     "31.25 dB vs bicubic 30.00 dB (+1.25) at step 1,000", "next checkpoint", "in 7 min",
                     "session left", "3.0 h"):
        assert expected in text, (expected, text)


def test_a_live_display_on_a_terminal_redraws_the_panel():
    console = Console(record=True, force_terminal=True, width=100)
    clock = iter(range(100))
    with ProgressDisplay(console, refresh_s=2.0, monotonic=lambda: next(clock)) as display:
        assert display.live is not None
        display.say("worker alice-host-1 on job j")
        display.update(TRAINING)
        display.update(WorkerProgress("alice-host-1", "training", run="espcn-x2", chunk=3, step=1300,
                                      end_step=4000, seconds_left=None))
    text = console.export_text()
    assert "worker alice-host-1 on job j" in text
    assert "1,300 of 4,000" in text and "no deadline" in text  # the last state is left on screen
    assert not re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text, re.M)  # no log lines on a terminal


def test_the_waiting_worker_shows_no_chunk():
    line = progress_line(WorkerProgress("w", "waiting", seconds_left=59.0))
    assert line == "doing waiting; session left 59 s"


def test_into_a_pipe_it_writes_timestamped_lines_not_a_panel():
    script = textwrap.dedent("""
        from rich.console import Console
        from shardrun.cli.worker import ProgressDisplay
        from shardrun.worker import WorkerProgress
        ticks = iter([0.0, 1.0, 2.0, 100.0])
        with ProgressDisplay(Console(), line_s=60.0, monotonic=lambda: next(ticks)) as display:
            assert display.live is None
            display.say("worker w on job j")
            for step in (10, 20, 30):
                display.update(WorkerProgress("w", "training", run="r", chunk=0, step=step, end_step=99))
            display.update(WorkerProgress("w", "checkpoint", run="r", chunk=0, step=40, end_step=99))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TERM": "xterm"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines), lines
    # The first report of an activity, then none until line_s has passed or the activity changes.
    assert [line[20:] for line in lines] == [
        "worker w on job j",
        "doing training; chunk r chunk 0; step 10 of 99; session left no deadline",
        "doing checkpoint; chunk r chunk 0; step 40 of 99; session left no deadline"]
    assert "\x1b[" not in out.stdout

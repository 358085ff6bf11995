"""`shardrun worker`: claim chunks, train, checkpoint and hand on, until the session ends."""

from __future__ import annotations

import time
from datetime import datetime

import click

from shardrun.cli.options import load_job, make_console
from shardrun.units import human_duration


class ProgressDisplay:
    """Shows a worker's progress (WorkerProgress): a rich Live panel on a terminal or in a notebook
    cell (Jupyter, Colab), redrawn every `refresh_s`; in a log file or a pipe, one timestamped
    line whenever the worker turns to something else and at most every `line_s` in between."""

    def __init__(self, console, refresh_s: float = 2.0, line_s: float = 60.0, monotonic=time.monotonic):
        self.console, self.refresh_s, self.line_s, self.monotonic = console, refresh_s, line_s, monotonic
        self.interactive = console.is_terminal or console.is_jupyter
        self.live = None
        self._last: tuple | None = None
        self._last_line_at: float | None = None

    def __enter__(self) -> "ProgressDisplay":
        if self.interactive:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=1 / self.refresh_s, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()

    def update(self, progress) -> None:
        from shardrun.render.worker import progress_line, progress_panel

        if self.live is not None:
            self.live.update(progress_panel(progress))  # drawn by Live's own timer, every refresh_s
            return
        what, now = (progress.activity, progress.run, progress.chunk), self.monotonic()
        if what != self._last or self._last_line_at is None or now - self._last_line_at >= self.line_s:
            self.say(progress_line(progress))
            self._last, self._last_line_at = what, now

    def say(self, text: str) -> None:
        """Prints a line (above the live panel, or with the time in front in a log)."""
        if self.live is None:
            text = f"{datetime.now():%Y-%m-%d %H:%M:%S} {text}"
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


@click.command()
@click.argument("job")
@click.option("--account", required=True, help="Your account in the job (the person running this session).")
@click.option("--budget", type=float, help="Stop after this many hours, if earlier than the platform's session limit.")
@click.option("--max-chunks", type=int, help="Stop after training this many chunks.")
@click.option("--checkpoint-minutes", type=float, default=None,
              help="Minutes between checkpoints: the most training a crash can lose. Default: adapts to what a "
                   "checkpoint costs (at most 2% of the session), every 1 to 2 minutes where it costs under 2.35 s.")
@click.option("--heartbeat-minutes", type=float, default=None,
              help="Minutes between heartbeats; default min(2, a third of the plan's lease), at most a third of it.")
@click.option("--settle-seconds", type=float, default=10.0, show_default=True,
              help="Seconds between writing a claim and trusting the store's listing; raise it where listings lag.")
@click.option("--poll-seconds", type=float, default=30.0, show_default=True,
              help="Seconds to wait before looking again when every ready chunk is taken.")
def worker(job, account, budget, max_chunks, checkpoint_minutes, heartbeat_minutes, settle_seconds, poll_seconds):
    """Claim ready chunks of a job, train them, checkpoint to the store and hand on.

    JOB is the job file, or (in a notebook that has only the store) the job's home URL,
    e.g. local:///srv/shardrun/alice/ultrasound-x2. The session's end comes from the platform
    (Colab, Kaggle: about 12 h from the machine's start; SLURM: the job's end time; local,
    SkyPilot: none) or --budget. SIGTERM (a spot VM's shutdown, SLURM's --signal) or Ctrl-C
    checkpoints, yields the chunk and exits 0; a second one exits at once. See docs/scaling.md.
    """
    import logging
    import os
    import signal

    from shardrun.config.platforms import load_platforms
    from shardrun.session import detect_session
    from shardrun.worker import Worker, WorkerJob, WorkerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if "://" in job and not job.endswith(".toml"):
        worker_job, platform = WorkerJob.from_home_url(job, account=account), None
    else:
        config = load_job(job)
        worker_job, platform = WorkerJob.from_config(config, account), config.platform
    session = detect_session(load_platforms(), platform or "colab-free", budget)
    settings = WorkerSettings(checkpoint_seconds=None if checkpoint_minutes is None else checkpoint_minutes * 60,
                              heartbeat_seconds=None if heartbeat_minutes is None else heartbeat_minutes * 60,
                              settle_seconds=settle_seconds, poll_seconds=poll_seconds)

    display = ProgressDisplay(make_console())

    def on_outcome(outcome):
        display.say(f"{outcome.what}: {outcome.result} at step {outcome.step} "
                    f"(from {outcome.start_step}, {human_duration(outcome.train_seconds)} of training)")
        for notice in outcome.notices:
            display.say(f"  note: {notice}")

    runner = Worker(worker_job, account, session, settings=settings, on_outcome=on_outcome,
                    on_update=display.update)
    display.say(f"worker {runner.id} on job {worker_job.name}; session: {session.source}")
    signals = {"count": 0}

    def on_signal(signum, frame):
        signals["count"] += 1
        if signals["count"] > 1:
            os._exit(130)  # every write is atomic: stopping here corrupts nothing
        runner.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with display:
        reason = runner.run(max_chunks=max_chunks)
    display.say(f"worker stopped: {reason}")

"""`shardrun worker`: claim chunks, train, checkpoint and hand on, until the session ends."""

from __future__ import annotations

import click

from shardrun.cli.options import load_job
from shardrun.units import human_duration


@click.command()
@click.argument("job")
@click.option("--account", required=True, help="Your account in the job (the person running this session).")
@click.option("--budget", type=float, help="Stop after this many hours, if earlier than the platform's session limit.")
@click.option("--max-chunks", type=int, help="Stop after training this many chunks.")
@click.option("--checkpoint-minutes", type=float, default=10.0, show_default=True,
              help="Minutes between checkpoints: the most training a crash can lose.")
@click.option("--heartbeat-minutes", type=float, default=2.0, show_default=True,
              help="Minutes between heartbeats (the plan's lease is 5 of them).")
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
    settings = WorkerSettings(checkpoint_seconds=checkpoint_minutes * 60, heartbeat_seconds=heartbeat_minutes * 60,
                              settle_seconds=settle_seconds, poll_seconds=poll_seconds)

    def on_outcome(outcome):
        click.echo(f"{outcome.run} chunk {outcome.chunk}: {outcome.result} at step {outcome.step} "
                   f"(from {outcome.start_step}, {human_duration(outcome.train_seconds)} of training)")
        for notice in outcome.notices:
            click.echo(f"  note: {notice}")

    runner = Worker(worker_job, account, session, settings=settings, on_outcome=on_outcome)
    click.echo(f"worker {runner.id} on job {worker_job.name}; session: {session.source}")
    signals = {"count": 0}

    def on_signal(signum, frame):
        signals["count"] += 1
        if signals["count"] > 1:
            os._exit(130)  # every write is atomic: stopping here corrupts nothing
        runner.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reason = runner.run(max_chunks=max_chunks)
    click.echo(f"worker stopped: {reason}")

"""The `shardrun` command: a thin adapter that parses, calls one library function and renders.

Nothing below this module prints or exits; library errors (ShardrunError) become `Error: ...`
and exit status 1.
"""

from __future__ import annotations

import functools

import click

from shardrun import __version__
from shardrun.errors import ShardrunError


def reports_errors(command):
    """Turns library errors raised by `command` into click's `Error: ...` and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ShardrunError as error:
            raise click.ClickException(str(error)) from error

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shardrun")
def main():
    """Train super-resolution networks far beyond one notebook session.

    A job (one TOML file) is planned once with `shardrun plan`, trained in time-boxed slices by
    `shardrun worker` in any number of sessions, and followed with `shardrun status`.
    """


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped output: keep table columns readable, not 80-wide
    return console


def _load(jobfile: str):
    from shardrun.config import load_job

    return load_job(jobfile)


@main.command()
@click.argument("jobfile", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Scan and plan, print the plan, but write nothing to any store.")
@click.option("--replace", is_flag=True,
              help="Make a new plan even though the dataset changed since the last one (training starts over).")
@reports_errors
def plan(jobfile, dry_run, replace):
    """Check the dataset, shard it over the accounts and write the job's plan.

    Prints the images accepted and rejected (with reasons), the shards per account with bytes
    used and free, each run's steps and chunks, and the estimated GPU-hours, sessions and
    calendar time. Re-running it after an interruption uploads only what is missing.
    """
    from rich.progress import Progress

    from shardrun.coordinator import plan_job
    from shardrun.render import plan_view

    job = _load(jobfile)
    console = _console()
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        tasks = {}

        def on_progress(phase, done, total):
            if phase not in tasks:
                tasks[phase] = bar.add_task({"scan": "Scanning images", "upload": "Uploading shards",
                                             "shard-bytes": "Current shard"}[phase])
            bar.update(tasks[phase], completed=done, total=total)

        report = plan_job(job, dry_run=dry_run, replace=replace, on_progress=on_progress)
    console.print(plan_view(report))
    from shardrun.advise_job import advise_plan
    from shardrun.prices import load_prices
    from shardrun.render_advice import advice_view

    try:
        console.print(advice_view(advise_plan(report, load_prices()), compact=True))
    except ShardrunError as error:  # the plan stands; only its advice is missing
        console.print(f"Advice unavailable: {error}", style="yellow", markup=False)


class _Duration(click.ParamType):
    """Hours or days, e.g. 36h or 3d, converted to hours."""

    name = "DURATION"

    def convert(self, value, param, ctx):
        from shardrun.advisor import parse_duration_hours

        if isinstance(value, float):
            return value
        try:
            return parse_duration_hours(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


@main.command()
@click.argument("jobfile", type=click.Path(dir_okay=False))
@click.option("--deadline", type=_Duration(),
              help="When training must be done, from now: hours or days, e.g. 36h or 3d (default: no deadline).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Sessions or GPUs at work at once (default: the job's `workers`, else one per account).")
@click.option("--prices", "prices_file", type=click.Path(dir_okay=False),
              help="Price file to use instead of the shipped configs/prices.toml.")
@click.option("--json", "as_json", is_flag=True, help="Print the advice as JSON (schema: docs/advice.md).")
@reports_errors
def advise(jobfile, deadline, workers, prices_file, as_json):
    """Compare free sessions, renting and buying for a job, and recommend one.

    Follows the source paper's roadmap (Temiz, Bilge, Uygur 2019): if the job fits in 12-hour
    pieces and 15 GB per account, train in free sessions, each team member in their own;
    otherwise take the cheapest of renting and buying that meets --deadline. Scans the dataset
    like `plan --dry-run` and writes nothing. Prices, speeds and their sources are in
    configs/prices.toml (docs/advice.md).
    """
    import json

    from rich.progress import Progress

    from shardrun.advise_job import advise_job
    from shardrun.prices import load_prices
    from shardrun.render_advice import advice_view

    job = _load(jobfile)
    prices = load_prices(prices_file)
    console = _console()
    with Progress(console=console, transient=True, disable=as_json or not console.is_terminal) as bar:
        task = bar.add_task("Scanning images")
        advice = advise_job(job, prices, workers=workers, deadline_hours=deadline,
                            on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        click.echo(json.dumps(advice.to_json(), indent=2))
    else:
        console.print(advice_view(advice))


@main.command()
@click.argument("jobfile", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (schema: docs/status-json.md).")
# --watch is a plain flag (its period is --interval) so that `status --watch job.toml` reads the
# job file as the job file, not as the period.
@click.option("--watch", is_flag=True, help="Redraw the table in place every --interval seconds until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=30.0, show_default=True, metavar="SECONDS",
              help="With --watch: seconds between refreshes.")
@click.option("--refreshes", type=click.IntRange(min=1),
              help="With --watch: stop after this many refreshes instead of waiting for Ctrl-C.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True),
              help="Also write the status as one self-contained web page with plots to this file.")
@reports_errors
def status(jobfile, as_json, watch, interval, refreshes, html_file):
    """Show the job's progress: per run steps, losses, validation PSNR/SSIM and ETA; workers,
    sessions, throughput by hardware and storage per account.

    Works from any machine that can read the job's home store: it syncs a local copy of the
    ledger with the journal (reading only new events) and asks each account for its usage.
    """
    import json

    from shardrun.render import status_view
    from shardrun.report import job_status

    job = _load(jobfile)
    if watch:
        if as_json or html_file:
            raise click.UsageError("--watch shows the table; it cannot be combined with --json or --html")
        from shardrun.live import watch as watch_view

        watch_view(_console(), lambda: status_view(job_status(job)), interval, refreshes)
        return
    result = job_status(job)
    if html_file:
        from pathlib import Path

        from shardrun.report_html import status_html

        try:
            Path(html_file).write_text(status_html(result), "utf-8")
        except OSError as e:
            raise click.ClickException(f"cannot write the page to {html_file}: {e.strerror or e}") from e
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _console().print(status_view(result))
        if html_file:
            click.echo(f"Wrote {html_file}")


@main.command()
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
@reports_errors
def worker(job, account, budget, max_chunks, checkpoint_minutes, heartbeat_minutes, settle_seconds, poll_seconds):
    """Claim ready chunks of a job, train them, checkpoint to the store and hand on.

    JOB is the job file, or (in a notebook that has only the store) the job's home URL,
    e.g. local:///srv/shardrun/alice/ultrasound-x2. The session's end comes from the platform
    (Colab, Kaggle: about 12 h from the machine's start; local: none) or --budget. SIGTERM or
    Ctrl-C checkpoints, yields the chunk and exits 0; a second one exits at once.
    """
    import logging
    import os
    import signal

    from shardrun.platforms import load_platforms
    from shardrun.session import detect_session
    from shardrun.worker import Worker, WorkerJob, WorkerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if "://" in job and not job.endswith(".toml"):
        worker_job, platform = WorkerJob.from_home_url(job, account=account), None
    else:
        config = _load(job)
        worker_job, platform = WorkerJob.from_config(config, account), config.platform
    session = detect_session(load_platforms(), platform or "colab-free", budget)
    settings = WorkerSettings(checkpoint_seconds=checkpoint_minutes * 60, heartbeat_seconds=heartbeat_minutes * 60,
                              settle_seconds=settle_seconds, poll_seconds=poll_seconds)

    def on_outcome(outcome):
        click.echo(f"{outcome.run} chunk {outcome.chunk}: {outcome.result} at step {outcome.step} "
                   f"(from {outcome.start_step}, {outcome.train_seconds:.0f} s of training)")
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


@main.command()
@click.option("--folder", type=click.Path(file_okay=False),
              help="Where to write the demo job (default: a new temporary folder, kept afterwards).")
@click.option("--workers", type=int, default=2, show_default=True, help="Workers to run side by side.")
@click.option("--epochs", type=int, default=30, show_default=True, help="Epochs of each run.")
@reports_errors
def demo(folder, workers, epochs):
    """Run a whole job offline: plan, two workers, status and PSNR gain over bicubic.

    Writes a small job on the embedded local store (two accounts, real sample photographs that
    scikit-image ships), plans it, trains its two runs with workers that coordinate only through
    the journal, then prints the status table and each run's PSNR gain over bicubic on
    photographs held out of training. Takes a few minutes on a laptop CPU; needs no network.
    """
    import tempfile
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from shardrun.demo import run_demo
    from shardrun.render import status_view

    console = _console()
    where = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="shardrun-demo-"))
    console.print(f"Demo job in {where}")
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)
    tasks = {}

    def on_plan(report):
        console.print(f"Planned: {report.scan.summary()}; {len(report.shards)} shards over "
                      f"{len({s['account'] for s in report.shards})} accounts; "
                      + ", ".join(f"{r.run.name}: {r.steps_total} steps in {len(r.chunks)} chunks" for r in report.runs))
        for r in report.runs:
            tasks[r.run.name] = bars.add_task(f"{r.run.name:<10}", total=r.steps_total)

    def on_progress(run, step, total):
        bars.update(tasks[run], completed=step)

    with bars:
        result = run_demo(where, workers=workers, epochs=epochs, on_progress=on_progress, on_plan=on_plan)
    console.print(status_view(result.status))
    table = Table(title="Held-out photographs (camera, coffee, chelsea): PSNR / SSIM on Y", title_justify="left")
    for col in ("run", "PSNR", "bicubic PSNR", "gain", "SSIM", "bicubic SSIM"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for s in result.scores:
        table.add_row(s.run, f"{s.psnr:.2f} dB", f"{s.bicubic_psnr:.2f} dB", f"{s.gain_db:+.2f} dB",
                      f"{s.ssim:.4f}", f"{s.bicubic_ssim:.4f}")
    console.print(table)
    console.print(f"Job folder kept at {where}: try `shardrun status {where / 'job.toml'}`.")


# The training commands live beside the training engine; they import TensorFlow only when run.
from shardrun.train_cli import bench, models  # noqa: E402

main.add_command(models)
main.add_command(bench)

# `shardrun accounts list|check|login` (shardrun/accounts_cli.py).
from shardrun.accounts_cli import accounts  # noqa: E402

main.add_command(accounts)

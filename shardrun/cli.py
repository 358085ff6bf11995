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
                tasks[phase] = bar.add_task({"scan": "Scanning images", "upload": "Uploading shards"}[phase])
            bar.update(tasks[phase], completed=done, total=total)

        report = plan_job(job, dry_run=dry_run, replace=replace, on_progress=on_progress)
    console.print(plan_view(report))


@main.command()
@click.argument("jobfile", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (schema: docs/status-json.md).")
@reports_errors
def status(jobfile, as_json):
    """Show the job's progress: chunks by state and steps done per run, storage per account."""
    import json

    from shardrun.render import status_view
    from shardrun.report import job_status

    result = job_status(_load(jobfile))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _console().print(status_view(result))

"""What several commands share, declared once: the job-file argument, `--json`, the console and
loading the job."""

from __future__ import annotations

import click

jobfile_argument = click.argument("jobfile", type=click.Path(dir_okay=False))


def json_option(what: str):
    """Returns the `--json` flag (stored as `as_json`) for a command that can print `what` as JSON."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def make_console():
    """Returns the console commands print to; piped output keeps table columns readable, not 80-wide."""
    from rich.console import Console

    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=160)


def load_job(jobfile: str):
    """Returns the job in `jobfile`, validated against the shipped platforms."""
    from shardrun.config.job import load_job as load

    return load(jobfile)

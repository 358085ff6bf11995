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

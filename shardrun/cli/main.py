"""The `shardrun` group: every command registered, and one place that turns library errors into
`Error: ...` and exit status 1.

Nothing below cli/ prints or exits; a command parses, calls one library function and renders.
"""

from __future__ import annotations

import click

from shardrun import __version__
from shardrun.cli.accounts import accounts
from shardrun.cli.advise import advise
from shardrun.cli.demo import demo
from shardrun.cli.errors import ShardrunGroup
from shardrun.cli.plan import plan
from shardrun.cli.product import evaluate, export, upscale
from shardrun.cli.status import status
from shardrun.cli.train import bench, models
from shardrun.cli.worker import worker


@click.group(cls=ShardrunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shardrun")
def main():
    """Train super-resolution networks far beyond one notebook session.

    A job (one TOML file) is planned once with `shardrun plan`, trained in time-boxed slices by
    `shardrun worker` in any number of sessions, and followed with `shardrun status`.
    """


for command in (plan, worker, status, accounts, advise, models, bench, export, upscale, evaluate, demo):
    main.add_command(command)

"""The one place where library errors meet the user: `Error: <message>` and exit status 1."""

from __future__ import annotations

import click

from shardrun.errors import ShardrunError


class ShardrunGroup(click.Group):
    """A command group whose commands, and its subgroups' commands, report a ShardrunError as
    click's `Error: ...` with exit status 1 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ShardrunError as error:
            raise click.ClickException(str(error)) from error

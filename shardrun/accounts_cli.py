"""`shardrun accounts list|check|login`: a thin adapter over shardrun.accounts."""

from __future__ import annotations

import functools

import click


def reports_errors(command):
    """Returns `command` wrapped by shardrun.cli.reports_errors, looked up at call time (cli imports us)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from shardrun.cli import reports_errors as wrap

        return wrap(command)(*args, **kwargs)

    return wrapper


@click.group()
def accounts():
    """See and check the job's accounts: sign-in, identity, quota, and whether each can write.

    A Drive account's identity is the email Drive reports for its credentials; local folders have
    none (anyone who can reach the folder is the account).
    """


def _table(infos, title: str):
    from rich.table import Table

    from shardrun.render import human_bytes

    table = Table(title=title, title_justify="left")
    for column in ("account", "store", "signs in with", "identity", "used", "limit", "state"):
        table.add_column(column, justify="right" if column in ("used", "limit") else "left")
    for info in infos:
        limit = "unlimited" if info.limit_bytes is None and info.used_bytes is not None else human_bytes(info.limit_bytes)
        table.add_row(info.name, info.store, info.signs_in, info.identity or "-",
                      human_bytes(info.used_bytes), limit, "ok" if info.ok else "FAILED")
    return table


@accounts.command("list")
@click.argument("jobfile", type=click.Path(dir_okay=False))
@reports_errors
def list_command(jobfile):
    """List each account: its store, how it signs in, who it is and its quota and usage.

    For Drive the identity and quota come from Drive itself (about.get); the limit shown is
    Drive's, capped by the account's quota_gb. Local folders show their usage and quota_gb.
    """
    from shardrun.accounts import list_accounts
    from shardrun.cli import _console, _load

    infos = list_accounts(_load(jobfile))
    console = _console()
    console.print(_table(infos, "Accounts"))
    for info in infos:
        if not info.ok:
            console.print(f"{info.name}: {info.problem}", markup=False, highlight=False)


@accounts.command("check")
@click.argument("jobfile", type=click.Path(dir_okay=False))
@click.pass_context
@reports_errors
def check_command(ctx, jobfile):
    """Check every account can write, read back and delete a probe object in its folder.

    Exits 1 with one line per failing account (missing or unshared folder, refused sign-in, a
    full Drive, two accounts signed in as the same person).
    """
    from shardrun.accounts import check_accounts
    from shardrun.cli import _console, _load

    infos = check_accounts(_load(jobfile))
    _console().print(_table(infos, "Account check: write, read back, delete"))
    failed = [info for info in infos if not info.ok]
    for info in failed:
        click.echo(f"{info.name}: {info.problem}", err=True)
    if failed:
        ctx.exit(1)


@accounts.command("login")
@click.argument("jobfile", type=click.Path(dir_okay=False))
@click.option("--account", "names", multiple=True,
              help="Sign in only this account (repeatable); default: every Drive account that uses OAuth.")
@click.option("--no-browser", is_flag=True, help="Only print the sign-in URL; do not try to open a browser.")
@reports_errors
def login_command(jobfile, names, no_browser):
    """Sign Drive accounts in with your own OAuth client id (the installed-app flow).

    Needs `client_secrets` on the account (a Desktop-app client from the Google Cloud console).
    The account's owner opens the URL shown and signs in; the token is saved (mode 0600) to the
    account's `credentials` path or ~/.config/shardrun/tokens/<job>-<account>.json and refreshed
    automatically afterwards.
    """
    from shardrun.accounts import login_accounts
    from shardrun.cli import _load

    def prompt(account, url):
        click.echo(f"Sign in as the owner of account {account}: open {url}")

    for name, path in login_accounts(_load(jobfile), list(names) or None, prompt, open_browser=not no_browser):
        click.echo(f"{name}: signed in; token saved to {path}")

"""`shardrun accounts list|check|login`: a thin adapter over shardrun.accounts."""

from __future__ import annotations

import click

from shardrun.cli.errors import ShardrunGroup
from shardrun.cli.options import jobfile_argument, load_job, make_console
from shardrun.render.accounts import accounts_table



@click.group(cls=ShardrunGroup)
def accounts():
    """See and check the job's accounts: sign-in, identity, quota, and whether each can write.

    A Drive account's identity is the email Drive reports for its credentials; local folders have
    none (anyone who can reach the folder is the account).
    """


@accounts.command("list")
@jobfile_argument
def list_command(jobfile):
    """List each account: its store, how it signs in, who it is and its quota and usage.

    For Drive the identity and quota come from Drive itself (about.get); the limit shown is
    Drive's, capped by the account's quota_gb. Local folders show their usage and quota_gb.
    """
    from shardrun.accounts import list_accounts

    infos = list_accounts(load_job(jobfile))
    console = make_console()
    console.print(accounts_table(infos, "Accounts"))
    for info in infos:
        if not info.ok:
            console.print(f"{info.name}: {info.problem}", markup=False, highlight=False)


@accounts.command("check")
@jobfile_argument
@click.pass_context
def check_command(ctx, jobfile):
    """Check every account can write, read back and delete a probe object in its folder.

    Exits 1 with one line per failing account (missing or unshared folder, refused sign-in, a
    full Drive, two accounts signed in as the same person).
    """
    from shardrun.accounts import check_accounts

    infos = check_accounts(load_job(jobfile))
    make_console().print(accounts_table(infos, "Account check: write, read back, delete"))
    failed = [info for info in infos if not info.ok]
    for info in failed:
        click.echo(f"{info.name}: {info.problem}", err=True)
    if failed:
        ctx.exit(1)


@accounts.command("login")
@jobfile_argument
@click.option("--account", "names", multiple=True,
              help="Sign in only this account (repeatable); default: every Drive account that uses OAuth.")
@click.option("--no-browser", is_flag=True, help="Only print the sign-in URL; do not try to open a browser.")
def login_command(jobfile, names, no_browser):
    """Sign Drive accounts in with your own OAuth client id (the installed-app flow).

    Needs `client_secrets` on the account (a Desktop-app client from the Google Cloud console).
    The account's owner opens the URL shown and signs in; the token is saved (mode 0600) to the
    account's `credentials` path or ~/.config/shardrun/tokens/<job>-<account>.json and refreshed
    automatically afterwards.
    """
    from shardrun.accounts import login_accounts

    def prompt(account, url):
        click.echo(f"Sign in as the owner of account {account}: open {url}")

    for name, path in login_accounts(load_job(jobfile), list(names) or None, prompt, open_browser=not no_browser):
        click.echo(f"{name}: signed in; token saved to {path}")

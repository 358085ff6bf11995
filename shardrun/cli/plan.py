"""`shardrun plan`: check the data, shard it over the accounts, write the plan, print the advice."""

from __future__ import annotations

import click

from shardrun.cli.options import jobfile_argument, load_job, make_console
from shardrun.errors import ShardrunError


@click.command()
@jobfile_argument
@click.option("--dry-run", is_flag=True, help="Scan and plan, print the plan, but write nothing to any store.")
@click.option("--replace", is_flag=True,
              help="Make a new plan even though the dataset changed since the last one (training starts over).")
def plan(jobfile, dry_run, replace):
    """Check the dataset, shard it over the accounts and write the job's plan.

    Prints the images accepted and rejected (with reasons), the shards per account with bytes
    used and free, each run's steps and chunks, and the estimated GPU-hours, sessions and
    calendar time. Re-running it after an interruption uploads only what is missing.
    """
    from rich.progress import Progress

    from shardrun.plan.job import plan_job
    from shardrun.render.plan import plan_view

    job = load_job(jobfile)
    console = make_console()
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        tasks = {}

        def on_progress(phase, done, total):
            if phase not in tasks:
                tasks[phase] = bar.add_task({"scan": "Scanning images", "upload": "Uploading shards",
                                             "shard-bytes": "Current shard"}[phase])
            bar.update(tasks[phase], completed=done, total=total)

        report = plan_job(job, dry_run=dry_run, replace=replace, on_progress=on_progress)
    console.print(plan_view(report))
    from shardrun.advice.job import advise_plan
    from shardrun.config.prices import load_prices
    from shardrun.render.advice import advice_view

    try:
        console.print(advice_view(advise_plan(report, load_prices()), compact=True))
    except ShardrunError as error:  # the plan stands; only its advice is missing
        console.print(f"Advice unavailable: {error}", style="yellow", markup=False)

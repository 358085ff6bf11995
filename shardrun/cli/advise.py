"""`shardrun advise`: free sessions, renting or buying, for one job (the paper's roadmap)."""

from __future__ import annotations

import click

from shardrun.cli.options import jobfile_argument, json_option, load_job, make_console


class _Duration(click.ParamType):
    """Hours or days, e.g. 36h or 3d, converted to hours."""

    name = "DURATION"

    def convert(self, value, param, ctx):
        from shardrun.advice.roadmap import parse_duration_hours

        if isinstance(value, float):
            return value
        try:
            return parse_duration_hours(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


@click.command()
@jobfile_argument
@click.option("--deadline", type=_Duration(),
              help="When training must be done, from now: hours or days, e.g. 36h or 3d (default: no deadline).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Sessions or GPUs at work at once (default: the job's `workers`, else one per account).")
@click.option("--prices", "prices_file", type=click.Path(dir_okay=False),
              help="Price file to use instead of the shipped configs/prices.toml.")
@json_option("the advice (schema: docs/advice.md)")
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

    from shardrun.advice.job import advise_job
    from shardrun.config.prices import load_prices
    from shardrun.render.advice import advice_view

    job = load_job(jobfile)
    prices = load_prices(prices_file)
    console = make_console()
    with Progress(console=console, transient=True, disable=as_json or not console.is_terminal) as bar:
        task = bar.add_task("Scanning images")
        advice = advise_job(job, prices, workers=workers, deadline_hours=deadline,
                            on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        click.echo(json.dumps(advice.to_json(), indent=2))
    else:
        console.print(advice_view(advice))

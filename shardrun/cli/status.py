"""`shardrun status`: the job's progress as a table, JSON, a web page, or a view refreshed in place."""

from __future__ import annotations

import click

from shardrun.cli.options import jobfile_argument, json_option, load_job, make_console


@click.command()
@jobfile_argument
@json_option("the status (schema: docs/status-json.md)")
# --watch is a plain flag (its period is --interval) so that `status --watch job.toml` reads the
# job file as the job file, not as the period.
@click.option("--watch", is_flag=True, help="Redraw the table in place every --interval seconds until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=30.0, show_default=True, metavar="SECONDS",
              help="With --watch: seconds between refreshes.")
@click.option("--refreshes", type=click.IntRange(min=1),
              help="With --watch: stop after this many refreshes instead of waiting for Ctrl-C.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True),
              help="Also write the status as one self-contained web page with plots to this file.")
@click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Also write the runs' curves as TensorBoard event files under DIR (one folder per run); "
                   "a later call adds only what is new. Needs `pip install 'shardrun[tensorboard]'`.")
def status(jobfile, as_json, watch, interval, refreshes, html_file, tensorboard_dir):
    """Show the job's progress: per run steps, losses, validation PSNR/SSIM and ETA; workers,
    sessions, throughput by hardware and storage per account.

    Works from any machine that can read the job's home store: it syncs a local copy of the
    ledger with the journal (reading only new events) and asks each account for its usage.
    """
    import json

    from shardrun.render.status import status_view
    from shardrun.status.report import job_status

    job = load_job(jobfile)
    exported = []
    export = None
    if tensorboard_dir:
        from shardrun.status.tensorboard import export_tensorboard, require_tensorboard

        require_tensorboard()  # before the sync: a missing package is known at once

        def export(ledger):
            exported.append(export_tensorboard(ledger, tensorboard_dir, job.name))
    if watch:
        if as_json or html_file:
            raise click.UsageError("--watch shows the table; it cannot be combined with --json or --html")
        from shardrun.cli.watch import watch as watch_view

        # With --tensorboard each refresh also adds the new points, so TensorBoard follows the job.
        watch_view(make_console(), lambda: status_view(job_status(job, with_ledger=export)), interval, refreshes)
        return
    result = job_status(job, with_ledger=export, pictures=bool(html_file))
    if html_file:
        from pathlib import Path

        from shardrun.render.html import status_html

        try:
            Path(html_file).write_text(status_html(result), "utf-8")
        except OSError as e:
            raise click.ClickException(f"cannot write the page to {html_file}: {e.strerror or e}") from e
    for run in result["runs"]:  # the pictures' bytes are for the page, not for --json
        ((run.get("validation") or {}).get("pictures") or {}).pop("png", None)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        make_console().print(status_view(result))
        if html_file:
            click.echo(f"Wrote {html_file}")
    for done in exported:
        # On stderr, so that --json's standard output stays one JSON document.
        click.echo(f"TensorBoard: {done.total} new point{'s' * (done.total != 1)} in {done.logdir} "
                   f"({', '.join(f'{run}: {n}' for run, n in done.points.items()) or 'nothing new'})", err=True)

"""`shardrun demo`: a whole job offline, with live progress, the status table and the scores."""

from __future__ import annotations

import click

from shardrun.cli.options import make_console


@click.command()
@click.option("--folder", type=click.Path(file_okay=False),
              help="Where to write the demo job (default: a new temporary folder, kept afterwards).")
@click.option("--workers", type=int, default=2, show_default=True, help="Workers to run side by side.")
@click.option("--epochs", type=int, default=30, show_default=True, help="Epochs of each run.")
def demo(folder, workers, epochs):
    """Run a whole job offline: plan, two workers, status and PSNR gain over bicubic.

    Writes a small job on the embedded local store (two accounts, real sample photographs that
    scikit-image ships), plans it, trains its two runs with workers that coordinate only through
    the journal, then prints the status table and each run's PSNR gain over bicubic on
    photographs held out of training. Takes a few minutes on a laptop CPU; needs no network.
    """
    import tempfile
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from shardrun.demo import run_demo
    from shardrun.render.status import status_view

    console = make_console()
    where = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="shardrun-demo-"))
    console.print(f"Demo job in {where}")
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)
    tasks = {}

    def on_plan(report):
        console.print(f"Planned: {report.scan.summary()}; {len(report.shards)} shards over "
                      f"{len({s['account'] for s in report.shards})} accounts; "
                      + ", ".join(f"{r.run.name}: {r.steps_total} steps in {len(r.chunks)} chunks" for r in report.runs))
        for r in report.runs:
            tasks[r.run.name] = bars.add_task(f"{r.run.name:<10}", total=r.steps_total)

    def on_progress(run, step, total):
        bars.update(tasks[run], completed=step)

    with bars:
        result = run_demo(where, workers=workers, epochs=epochs, on_progress=on_progress, on_plan=on_plan)
    console.print(status_view(result.status))
    table = Table(title="Held-out photographs (camera, coffee, chelsea): PSNR / SSIM on Y", title_justify="left")
    for col in ("run", "PSNR", "bicubic PSNR", "gain", "SSIM", "bicubic SSIM"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for s in result.scores:
        table.add_row(s.run, f"{s.psnr:.2f} dB", f"{s.bicubic_psnr:.2f} dB", f"{s.gain_db:+.2f} dB",
                      f"{s.ssim:.4f}", f"{s.bicubic_ssim:.4f}")
    console.print(table)
    if result.result is not None:
        r = result.result
        console.print(f"Result: {r.run} (the larger gain) exported to {r.model}; a held-out photo enlarged "
                      f"with it: {r.enlarged}; bicubic | network | original side by side: {r.comparison}")
    console.print(f"Job folder kept at {where}: try `shardrun status {where / 'job.toml'}`.")

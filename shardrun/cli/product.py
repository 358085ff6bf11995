"""`shardrun export`, `upscale` and `evaluate`: a run's product out of the job (docs/models-out.md)."""

from __future__ import annotations

from pathlib import Path

import click

from shardrun.cli.options import jobfile_argument, json_option, load_job, make_console

checkpoint_option = click.option(
    "--checkpoint", "checkpoint", default="final", show_default=True, metavar="final|latest|best|STEP",
    help="Which accepted checkpoint: the run's final one, the latest, the best by validation PSNR, or a step.")
force_option = click.option("--force", is_flag=True, help="Replace an output that already exists.")


@click.command()
@jobfile_argument
@click.option("--run", "run", required=True, help="The run to export.")
@checkpoint_option
@click.option("--format", "fmt", type=click.Choice(["keras", "savedmodel", "tflite", "onnx"]), default="keras",
              show_default=True, help="The model format to write.")
@click.option("-o", "--output", type=click.Path(), help="Where to write it (default: <run>-step<N>.<suffix>).")
@force_option
def export(jobfile, run, checkpoint, fmt, output, force):
    """Export a run's accepted checkpoint (hash-checked) as a standard model with a model.json beside it."""
    from shardrun.product.checkpoints import parse_choice
    from shardrun.product.export import export_run
    from shardrun.render.product import export_view

    result = export_run(load_job(jobfile), run, parse_choice(checkpoint), fmt,
                        Path(output) if output else None, force)
    console = make_console()
    for notice in result.notices:
        console.print(f"[yellow]Note:[/yellow] {notice}")
    console.print(export_view(result))


@click.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "folder", type=click.Path(file_okay=False),
              help="Folder for the enlarged images (default: beside each image, as <name>_x<scale>).")
@click.option("--tile", type=click.IntRange(min=16), default=256, show_default=True,
              help="Tile side in input pixels: bounds memory; the result does not depend on it.")
@force_option
def upscale(model, images, folder, tile, force):
    """Enlarge IMAGES with MODEL (an exported .keras file, or JOB:RUN for a run's final checkpoint).

    A one-channel network enlarges Y and bicubic enlarges Cb/Cr. Each image keeps its format,
    EXIF data (orientation applied) and 16-bit depth for 16-bit grayscale PNGs. A bad image is
    one line; the others still run.
    """
    from rich.progress import Progress

    from shardrun.product.upscale import load_model_source, upscale_images

    console = make_console()
    loaded = load_model_source(model)
    for notice in loaded.notices:
        console.print(f"[yellow]Note:[/yellow] {notice}")
    with Progress(console=console, transient=True) as progress:
        tasks = {}

        def on_tile(source, done, total):
            if source not in tasks:
                tasks[source] = progress.add_task(Path(source).name, total=total)
            progress.update(tasks[source], completed=done)

        results = upscale_images(loaded, [Path(i) for i in images], Path(folder) if folder else None, tile,
                                 force, on_tile=on_tile)
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            click.echo(f"Error: {r.error}", err=True)
        else:
            click.echo(f"{r.source} -> {r.output} ({r.size[0]}×{r.size[1]})")
    if failed:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("source", metavar="JOB|MODEL")
@click.option("--data", required=True, type=click.Path(), help="A folder of HR benchmark images (e.g. Set5/).")
@click.option("--run", "run", help="Only this run of the job.")
@json_option("the evaluation (schema shardrun.evaluate/1)")
@click.option("--html", "html_file", type=click.Path(dir_okay=False),
              help="Also write the evaluation as one self-contained web page, with each run's first "
                   "crops side by side (bicubic, network, original), to this file.")
@force_option
def evaluate(source, data, run, as_json, html_file, force):
    """Measure PSNR/SSIM on Y (border shaved, MATLAB bicubic degradation) per image and mean,
    beside bicubic and the published figures (configs/published.toml)."""
    import json

    from shardrun.product.evaluate import evaluate as run_evaluation
    from shardrun.render.product import evaluate_html, evaluate_view

    if html_file and Path(html_file).exists() and not force:
        raise click.ClickException(f"{html_file} already exists; add --force to replace it")
    report = run_evaluation(source, Path(data), run, pictures=bool(html_file))
    if html_file:
        try:
            Path(html_file).write_text(evaluate_html(report), "utf-8")
        except OSError as e:
            raise click.ClickException(f"cannot write the page to {html_file}: {e.strerror or e}") from e
        for result in report["results"]:
            result.pop("pictures", None)  # bytes: the page has them, the JSON and tables do not
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    console = make_console()
    for line in report["notices"] + report["skipped"] + [s for r in report["results"] for s in r["skipped"]]:
        console.print(f"[yellow]Note:[/yellow] {line}")
    for table in evaluate_view(report):
        console.print(table)
    if html_file:
        console.print(f"Wrote {html_file}")

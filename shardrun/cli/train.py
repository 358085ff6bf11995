"""The `shardrun models` and `shardrun bench` commands: thin adapters over shardrun.train.

TensorFlow is imported inside the commands only, so `shardrun --help` stays fast.
"""

from __future__ import annotations

import datetime
import json

import click

from shardrun.cli.options import json_option
from shardrun.units import human_duration



def _parse_options(pairs: tuple[str, ...]) -> dict[str, int]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            options[key.strip()] = int(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=INTEGER (e.g. blocks=3)",
                                     param_hint="--option")
    return options


@click.command("models")
@click.option("--channels", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="Image channels the models are built for: 1 (Y) or 3 (RGB).")
@click.option("--scale", type=int, default=2, show_default=True,
              help="Upscaling factor the models are built for.")
@json_option("the list")
def models(channels: str, scale: int, as_json: bool):
    """List the super-resolution models with their parameter counts.

    Each model is built for the given channels and scale to count its trainable parameters;
    a model that does not support the scale is listed without a count.
    """
    from shardrun.train.models import MODELS, ModelError, count_parameters, resolve_model

    every_scale = sorted({s for spec in MODELS.values() for s in spec.scales})
    if scale not in every_scale:
        raise ModelError(f"scale={scale} is not supported by any model; supported: "
                         f"{', '.join(map(str, every_scale))}")
    rows = []
    for name, spec in MODELS.items():
        supported = scale in spec.scales
        config = resolve_model(name, scale, int(channels)) if supported else None
        rows.append({
            "name": name,
            "parameters": count_parameters(config) if supported else None,
            "input": spec.input_kind,
            "scales": list(spec.scales),
            "options": dict(spec.defaults),
            "loss": spec.loss,
            "summary": spec.summary,
            "citation": spec.citation,
        })
    if as_json:
        click.echo(json.dumps({"channels": int(channels), "scale": scale, "models": rows}, indent=2))
        return
    click.echo(f"Models for scale {scale}, {channels} channel(s):")
    click.echo(f"{'model':<14} {'parameters':>10}  {'input':<9} {'scales':<9} options")
    for row in rows:
        count = f"{row['parameters']:,}" if row["parameters"] is not None else "-"
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items())
        scales = ",".join(map(str, row["scales"]))
        click.echo(f"{row['name']:<14} {count:>10}  {row['input']:<9} {scales:<9} {options}; loss={row['loss']}")
        click.echo(f"{'':<14} {'':>10}  {row['summary']} [{row['citation']}]")


@click.command("bench")
@click.option("--model", "model_names", multiple=True, default=("decusr",), show_default=True,
              help="Model to measure (repeat for several, or 'all').")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="Model option, e.g. blocks=3 (repeatable; applies to every model measured).")
@click.option("--scale", type=int, default=2, show_default=True, help="Upscaling factor.")
@click.option("--channels", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="1 trains on luma (Y), 3 on RGB.")
@click.option("--patch-size", type=int, default=32, show_default=True,
              help="HR patch side in pixels.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Patches per step.")
@click.option("--steps", type=int, default=20, show_default=True,
              help="Timed training steps per model.")
@click.option("--warmup", type=int, default=3, show_default=True,
              help="Untimed steps first (tracing, filling the input pipeline).")
@click.option("--steps-per-call", type=int, default=1, show_default=True,
              help="Training steps per compiled call (more helps small models on a GPU).")
@click.option("--images", type=int, default=500, show_default=True,
              help="Dataset size for the seconds-per-epoch estimate (the paper's Table 1 used 500).")
@click.option("--patches-per-image", type=int, default=16, show_default=True,
              help="Patches each image gives per epoch, for the estimate.")
@click.option("--output", type=click.Path(dir_okay=False), default="throughput-profile.toml",
              show_default=True, help="Where to write the throughput profile (TOML).")
@click.option("--name", default=None, help="The profile's name (default: the device).")
@json_option("the results")
def bench(model_names, option_pairs, scale, channels, patch_size, batch_size, steps, warmup,
          steps_per_call, images, patches_per_image, output, name, as_json):
    """Measure training throughput on this machine and write a throughput profile.

    Trains each model for a few steps on scikit-image's sample photographs through the real
    input pipeline (on the GPU when there is one), reports patches per second and the time of
    one epoch, prints the source paper's epoch times beside them, and writes a profile that
    `shardrun plan` can use (job key `profile = "path/to/profile.toml"`).
    """
    from shardrun.train.bench import device_description, measure, profile_toml, write_profile
    from shardrun.config.paper import paper_figures
    from shardrun.train.models import MODELS
    from shardrun.train.trainer import TrainConfig

    options = _parse_options(option_pairs)
    names = list(MODELS) if "all" in model_names else list(dict.fromkeys(model_names))
    device = device_description()
    results = [
        measure(TrainConfig(model=model, scale=scale, channels=int(channels), options=options,
                            patch_size=patch_size, batch_size=batch_size,
                            patches_per_image=patches_per_image),
                steps=steps, warmup=warmup, steps_per_call=steps_per_call)
        for model in names
    ]
    today = datetime.date.today().isoformat()
    text = profile_toml(results, name=name or device, device=device, measured=today,
                        comment=f"Written by `shardrun bench` on {today}.")
    path = write_profile(output, text)
    figures = paper_figures()
    if as_json:
        click.echo(json.dumps({
            "device": device, "profile": str(path),
            "results": [{"model": r.model, "options": dict(r.options), "parameters": r.parameters,
                         "patches_per_second": r.patches_per_second,
                         "seconds_per_step": r.seconds / r.steps,
                         "seconds_per_epoch": r.seconds_per_epoch(images, patches_per_image)}
                        for r in results],
            "paper": figures,
        }, indent=2))
        return
    click.echo(f"Device: {device}; patch {patch_size}, batch {batch_size}, scale {scale}, "
               f"{channels} channel(s)")
    click.echo(f"{'model':<10} {'parameters':>10} {'patches/s':>10} {'ms/step':>8}  "
               f"one epoch of {images} images x {patches_per_image} patches")
    for r in results:
        click.echo(f"{r.model:<10} {r.parameters:>10,} {r.patches_per_second:>10.1f} "
                   f"{1000 * r.seconds / r.steps:>8.1f}  "
                   f"{human_duration(r.seconds_per_epoch(images, patches_per_image))}")
    for table in figures["tables"].values():
        click.echo("")
        click.echo(f"{figures['paper']['short']}, {table['caption']}:")
        for row in table["rows"]:
            click.echo(f"  {row['device']:<28} {row['published']}")
    click.echo("")
    click.echo("The paper's patch layout differs from this one: compare orders of magnitude.")
    click.echo(f"Wrote the throughput profile to {path}")

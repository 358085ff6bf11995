"""`shardrun evaluate`: PSNR/SSIM on a benchmark folder, by the SR literature's protocol.

For each image: HR is cropped to a multiple of the scale; its BT.601 Y is rounded to 8 bits (as
MATLAB's rgb2ycbcr returns for 8-bit images); LR is the MATLAB-style bicubic reduction (antialiased)
of HR; bicubic is the MATLAB-style enlargement of LR. A one-channel network enlarges LR's Y, an RGB
network LR's RGB (scored on the Y of its output). Outputs are clipped to [0, 1], not rounded.
PSNR and SSIM (Gaussian 11×11, σ 1.5) are computed on Y with `scale` pixels shaved from each border.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shardrun.product.checkpoints import ProductError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SCHEMA = "shardrun.evaluate/1"


@dataclass(frozen=True)
class Benchmark:
    """A folder's usable images as 8-bit RGB arrays, and the files left out with why."""

    name: str
    images: list[tuple[str, np.ndarray]]
    skipped: list[str]


def load_folder(folder: Path) -> Benchmark:
    """Returns the folder's readable images; raises ProductError when it has none."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise ProductError(f"--data {folder} is not a folder")
    images, skipped = [], []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                images.append((path.name, np.asarray(image.convert("RGB"), dtype=np.uint8)))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            skipped.append(f"{path.name}: not a readable image ({e})")
    if not images:
        raise ProductError(f"--data {folder} holds no usable image"
                           + (f" ({len(skipped)} unreadable files)" if skipped else ""))
    return Benchmark(folder.name, images, skipped)


def minimum_side(scale: int) -> int:
    """Returns the smallest HR side that leaves an 11×11 SSIM window after shaving `scale` pixels."""
    from shardrun.train.metrics import SSIM_WINDOW

    return SSIM_WINDOW + 2 * scale


def prepare(rgb8: np.ndarray, scale: int) -> dict[str, np.ndarray]:
    """Returns one image's HR (RGB and rounded Y), LR (RGB and Y) and bicubic Y for `scale`."""
    from shardrun.train.imresize import imresize, rgb_to_ycbcr

    h, w = rgb8.shape[0] - rgb8.shape[0] % scale, rgb8.shape[1] - rgb8.shape[1] % scale
    hr = rgb8[:h, :w].astype(np.float64) / 255.0
    hr_y = np.round(rgb_to_ycbcr(hr)[..., :1] * 255.0) / 255.0
    lr_y = imresize(hr_y, 1 / scale)
    return {"hr": hr, "hr_y": hr_y, "lr_rgb": imresize(hr, 1 / scale), "lr_y": lr_y,
            "bicubic_y": np.clip(imresize(lr_y, scale), 0.0, 1.0)}


def network_y(model, prepared: dict[str, np.ndarray], tile: int = 512) -> np.ndarray:
    """Returns the network's Y enlargement of the prepared image (clipped to [0, 1])."""
    from shardrun.train.imresize import imresize, rgb_to_ycbcr
    from shardrun.train.tiles import enlarge_whole, margin_for

    s = model.scale

    def enlarge(region):
        x = imresize(region, s) if model.input_kind == "upsampled" else region
        return np.asarray(model.predict(x[None].astype(np.float32)))[0].astype(np.float64)

    margin = margin_for(model.radius, s, model.input_kind)
    source = prepared["lr_y"] if model.channels == 1 else prepared["lr_rgb"]
    out = np.clip(enlarge_whole(source, enlarge, s, tile, margin), 0.0, 1.0)
    return out if model.channels == 1 else rgb_to_ycbcr(out)[..., :1]


def score_model(model, benchmark: Benchmark, label: str, extra: dict | None = None,
                pictures: bool = False) -> dict:
    """Returns the model's and bicubic's scores per image and their means on the benchmark; with
    `pictures`, also the first images' crops side by side (bicubic | network | original) as a PNG
    strip under "pictures" (bytes: left out of the JSON)."""
    from shardrun.config.published import family, published_for
    from shardrun.plan.validation import PICTURE_CROPS, pictures_png
    from shardrun.train.metrics import psnr, ssim

    scale, rows, skipped, triples = model.scale, [], [], []
    for name, rgb8 in benchmark.images:
        if min(rgb8.shape[:2]) < minimum_side(scale):
            skipped.append(f"{name}: {rgb8.shape[1]}×{rgb8.shape[0]} pixels is smaller than ×{scale} allows "
                           f"(at least {minimum_side(scale)} on each side)")
            continue
        p = prepare(rgb8, scale)
        sr = network_y(model, p)
        rows.append({"image": name, "psnr": psnr(p["hr_y"], sr, scale), "ssim": ssim(p["hr_y"], sr, scale),
                     "bicubic_psnr": psnr(p["hr_y"], p["bicubic_y"], scale),
                     "bicubic_ssim": ssim(p["hr_y"], p["bicubic_y"], scale)})
        if pictures and len(triples) < PICTURE_CROPS:
            triples.append((p["bicubic_y"], sr, p["hr_y"]))
    if not rows:
        raise ProductError(f"no image of {benchmark.name} is large enough for ×{scale}: "
                           + "; ".join(skipped))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
    model_family = family((extra or {}).get("model", ""))
    published = [f.__dict__ for f in published_for(benchmark.name, scale)
                 if f.model in ("bicubic", model_family) or not model_family]
    result = {"label": label, "scale": scale, "channels": model.channels, "input_kind": model.input_kind,
              **(extra or {}), **mean, "images": rows, "skipped": skipped, "published": published}
    if triples:
        png, places = pictures_png(triples)
        crops = [{**place, "name": row["image"], "psnr": row["psnr"], "bicubic_psnr": row["bicubic_psnr"]}
                 for place, row in zip(places, rows)]
        result["pictures"] = {"png": png, "crops": crops}
    return result


def evaluate(source: str, data: Path, run: str | None = None, clock=None, pictures: bool = False) -> dict:
    """Returns the evaluation (schema shardrun.evaluate/1) of a job's runs (each at its latest
    accepted checkpoint) or of an exported .keras model, on the images of `data`; with `pictures`,
    each result carries its crops for the page (see score_model)."""
    from shardrun.product.upscale import LoadedModel, _keras_model

    benchmark = load_folder(Path(data))
    results, notices = [], []
    path = Path(source)
    if path.suffix == ".keras":
        if run is not None:
            raise ProductError("--run names a run of a job; MODEL is an exported file")
        if not path.is_file():
            raise ProductError(f"MODEL {path} does not exist")
        from shardrun.product.upscale import _read_description

        model = _keras_model(path)
        info = _read_description(path) or {}
        results.append(score_model(model, benchmark, path.name, {"model": info.get("model", ""),
                                                                  "step": info.get("checkpoint", {}).get("step")},
                                   pictures))
    else:
        from shardrun.config.job import load_job
        from shardrun.plan.job import load_job_ledger
        from shardrun.product.checkpoints import fetch_checkpoint
        from shardrun.product.export import model_config_of
        from shardrun.train.portable import portable_model, receptive_radius

        job = load_job(source)
        ledger, _ = load_job_ledger(job, job.open_store(job.home), clock)
        try:
            names = [r["name"] for r in ledger.runs()]
            if run is not None and run not in names:
                raise ProductError(f"the job has no run named {run!r}; its runs are: {', '.join(names)}")
            for name in [run] if run else names:
                fetched = fetch_checkpoint(job, ledger, name, "latest")
                notices += fetched.notices
                config = model_config_of(fetched.meta)
                net = portable_model(config, fetched.weights)
                model = LoadedModel(name, lambda x, net=net: net(x, training=False).numpy(), config.scale,
                                    config.channels, config.input_kind, receptive_radius(net), [])
                results.append(score_model(model, benchmark, name, {
                    "run": name, "model": config.name, "step": fetched.step, "steps_total": fetched.steps_total},
                    pictures))
        finally:
            ledger.close()
    return {"schema": SCHEMA, "data": str(data), "dataset": benchmark.name, "images": len(benchmark.images),
            "skipped": benchmark.skipped, "notices": notices, "results": results}

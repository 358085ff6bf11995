"""`shardrun upscale`: photos of any size enlarged by a run's network, tile by tile.

MODEL is an exported `.keras` file (its `<name>.model.json` beside it is read when present), a
SavedModel folder exported by shardrun (its model.json beside it is required), or `JOB:RUN` (the
run's final accepted checkpoint, fetched and verified). Each image keeps its file format, its
EXIF data with the orientation applied, and 16-bit depth for 16-bit grayscale PNGs. A bad image
is reported in one line and the others still run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shardrun.product.checkpoints import ProductError

DEFAULT_TILE = 256  # input pixels per tile side: a ×4 RGB tile stays a few tens of MB
MIN_SIDE = 4  # the smallest input side a model is asked to enlarge (models.MIN_LR_PATCH)


@dataclass
class LoadedModel:
    """A network ready to enlarge: predict((1, h, w, C) float32) and what it expects."""

    name: str
    predict: Callable[[np.ndarray], np.ndarray]
    scale: int
    channels: int
    input_kind: str
    radius: int
    notices: list[str]


@dataclass(frozen=True)
class Upscaled:
    """One image's outcome: written to `output`, or `error` saying why not."""

    source: Path
    output: Path | None
    size: tuple[int, int] | None = None
    error: str | None = None


def _keras_model(path: Path) -> LoadedModel:
    import keras

    from shardrun.train.portable import describe_input, receptive_radius

    try:
        model = keras.saving.load_model(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        raise ProductError(f"{path} is not a Keras model that can be loaded: {e}") from e
    info = describe_input(model)
    probe = np.zeros((1, 8, 8, info["channels"]), np.float32)
    out = model(probe, training=False).shape
    scale = int(out[1]) // 8
    described = _read_description(path)
    if described:
        info["input_kind"] = described.get("input_kind", info["input_kind"])
        scale = described.get("scale", scale)
    if info["input_kind"] == "upsampled" and not described:
        raise ProductError(f"{path} takes a bicubic-enlarged input and its scale is unknown: "
                           f"its model.json ({_description_of(path)}) is missing")
    return LoadedModel(str(path), lambda x: model(x, training=False).numpy(), scale, info["channels"],
                       info["input_kind"], receptive_radius(model), [])


def _description_of(path: Path) -> Path:
    from shardrun.product.export import description_path

    return description_path(path)


def _read_description(path: Path) -> dict | None:
    info = _description_of(path)
    if not info.exists():
        return None
    try:
        return json.loads(info.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise ProductError(f"{info} cannot be read: {e}") from e


def _run_model(job, run: str, clock=None) -> LoadedModel:
    from shardrun.plan.job import load_job_ledger
    from shardrun.product.checkpoints import fetch_checkpoint
    from shardrun.product.export import model_config_of
    from shardrun.train.portable import portable_model, receptive_radius

    ledger, _ = load_job_ledger(job, job.open_store(job.home), clock)
    try:
        fetched = fetch_checkpoint(job, ledger, run, "final")
    finally:
        ledger.close()
    config = model_config_of(fetched.meta)
    model = portable_model(config, fetched.weights)
    return LoadedModel(f"{job.name}:{run} (step {fetched.step})", lambda x: model(x, training=False).numpy(),
                       config.scale, config.channels, config.input_kind, receptive_radius(model),
                       list(fetched.notices))


def load_model_source(source: str, clock=None) -> LoadedModel:
    """Returns the network `source` names: a `.keras` file, or `JOB:RUN` (a job file and a run)."""
    path = Path(source)
    if path.suffix == ".keras" and path.is_file():
        return _keras_model(path)
    if path.is_dir():
        raise ProductError(f"{path} is a folder: upscale takes a .keras file or JOB:RUN "
                           "(export a .keras file with `shardrun export --format keras`)")
    job_file, sep, run = source.rpartition(":")
    if sep and run and Path(job_file).is_file():
        from shardrun.config.job import load_job

        return _run_model(load_job(job_file), run, clock)
    raise ProductError(f"MODEL {source!r} is neither a .keras file nor JOB:RUN with an existing job file")


def read_image(path: Path):
    """Returns (pixels float32 (H, W, C) in [0, 1], mode, format, exif bytes, bits) of an image
    file, its EXIF orientation applied; raises ProductError naming the file when it is unusable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            fmt = image.format
            image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ProductError(f"{path} is not a readable image: {e}") from e
    exif = image.getexif()
    exif_bytes = exif.tobytes() if len(exif) else None
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.asarray(image, dtype=np.float64) / 65535.0
        pixels, bits = np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=2).astype(np.float32), 16
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        pixels, bits, mode = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0, 8, "RGBA"
    else:
        pixels, bits = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0, 8
        mode = "L" if mode in ("L", "1") else "RGB"
    return pixels, mode, fmt, exif_bytes, bits


def output_path(source: Path, folder: Path | None, scale: int) -> Path:
    """Returns where the enlargement of `source` goes: `<stem>_x<scale><suffix>` in `folder`
    (the source's own folder by default)."""
    return (folder or source.parent) / f"{source.stem}_x{scale}{source.suffix}"


def _save(values: np.ndarray, mode: str, fmt: str | None, exif: bytes | None, bits: int, path: Path) -> None:
    from PIL import Image

    if bits == 16:
        image = Image.fromarray(values[..., 0])  # uint16: mode I;16
    else:
        rgb = values
        if mode == "L":
            image = Image.fromarray(rgb[..., 0], "L")
        else:
            image = Image.fromarray(rgb, "RGBA" if rgb.shape[-1] == 4 else "RGB")
    fmt = fmt if fmt in ("PNG", "JPEG", "TIFF", "BMP", "WEBP") else "PNG"
    if fmt == "JPEG" and image.mode == "RGBA":
        image = image.convert("RGB")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if exif and fmt in ("JPEG", "PNG", "TIFF", "WEBP"):
        options["exif"] = exif
    temp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(temp, format=fmt, **options)
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)


def enlarge_pixels(model: LoadedModel, pixels: np.ndarray, tile: int = DEFAULT_TILE,
                   on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Returns the enlarged image (float64 in [0, 1]) of RGB(A) pixels, computed by tiles."""
    from shardrun.train.tiles import enlarge_whole, margin_for, network_enlarger

    enlarge = network_enlarger(model.predict, model.scale, model.channels, model.input_kind)
    margin = margin_for(model.radius, model.scale, model.input_kind)
    return enlarge_whole(pixels, enlarge, model.scale, tile, margin, on_tile)


def enlarge_quantized(model: LoadedModel, pixels: np.ndarray, bits: int, tile: int = DEFAULT_TILE,
                      on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Returns the enlarged image as uint8 (or uint16 for `bits` 16), each tile rounded as it
    comes, so the whole enlargement never exists as floats (a 4000×3000 photo at ×4 would be 4 GB)."""
    from shardrun.train.tiles import enlarge_tiles, margin_for, network_enlarger

    enlarge = network_enlarger(model.predict, model.scale, model.channels, model.input_kind)
    margin = margin_for(model.radius, model.scale, model.input_kind)
    dtype, top_value = (np.uint16, 65535.0) if bits == 16 else (np.uint8, 255.0)
    s = model.scale
    out = np.zeros((pixels.shape[0] * s, pixels.shape[1] * s, pixels.shape[2]), dtype)
    for y, x, block in enlarge_tiles(pixels, enlarge, s, tile, margin, on_tile):
        out[y:y + block.shape[0], x:x + block.shape[1]] = np.round(block * top_value).astype(dtype)
    return out


def upscale_images(model: LoadedModel, images: Sequence[Path], folder: Path | None = None,
                   tile: int = DEFAULT_TILE, force: bool = False,
                   on_image: Callable[[Upscaled], None] | None = None,
                   on_tile: Callable[[Path, int, int], None] | None = None) -> list[Upscaled]:
    """Returns one outcome per image: each enlarged and written, or its one-line error."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    results = []
    for source in map(Path, images):
        target = output_path(source, folder, model.scale)
        try:
            if target.exists() and not force:
                raise ProductError(f"{target} already exists; pass --force to replace it")
            pixels, mode, fmt, exif, bits = read_image(source)
            if min(pixels.shape[:2]) < MIN_SIDE:
                raise ProductError(f"{source} is {pixels.shape[1]}×{pixels.shape[0]} pixels; the model "
                                   f"needs at least {MIN_SIDE}×{MIN_SIDE}")
            out = enlarge_quantized(model, pixels, bits, tile,
                                    (lambda done, total: on_tile(source, done, total)) if on_tile else None)
            _save(out, mode, fmt, exif, bits, target)
            result = Upscaled(source, target, (out.shape[1], out.shape[0]))
        except ProductError as e:
            result = Upscaled(source, None, error=str(e))
        results.append(result)
        if on_image:
            on_image(result)
    return results

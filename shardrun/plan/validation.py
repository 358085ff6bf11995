"""The validation set: images a job scores at every checkpoint and never trains on.

Chosen at plan time, in this order:

- `validation = "val/"` in [job]: a held-out folder, scanned like the data. An image whose content
  (sha256) is also in the training data is refused: the plan stops and names it.
- Otherwise a share of the data is held out of training (`validation_share`, 0.1 by default): an
  image is held out when its content hash, read as a fraction of 2^256, is below the share, so a
  re-plan of the same images holds out the same ones and adding images moves none of the others;
  the count is then brought within [MIN_HELD_OUT, MAX_IMAGES] by taking the lowest hashes.
- A dataset of fewer than MIN_TO_HOLD_OUT images (or `validation_share = 0`) holds none out: its
  validation uses FALLBACK_IMAGES training images, drawn evenly, and says so (`source` "training").

From each image one square crop of at most CROP pixels is kept, the one of most texture
(train.metrics.texture_crop), and the crops go to the home store as one small .npz whose md5 the
plan event records; workers read that file, never the images.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np

from shardrun import paths
from shardrun.errors import PlanError
from shardrun.plan.dataset import ImageInfo, ScanResult, display_path, scan_dataset

MIN_TO_HOLD_OUT = 20
MIN_HELD_OUT = 2
MAX_IMAGES = 32
FALLBACK_IMAGES = 4
CROP = 128


@dataclass(frozen=True)
class ValidationSet:
    """The images validation scores: what they are called, where they come from, which they are."""

    name: str  # e.g. "val/", "held out of images/", "training images (too few to hold any out)"
    source: str  # "folder", "held-out" or "training"
    images: tuple[ImageInfo, ...]

    def describe(self) -> str:
        """Returns one line for the plan's report."""
        return f"validation: {len(self.images)} images, {self.name}"


def held_out(images: list[ImageInfo], share: float) -> list[ImageInfo]:
    """Returns the images held out of training (see the module docstring)."""
    if share <= 0 or len(images) < MIN_TO_HOLD_OUT:
        return []
    by_hash = sorted(images, key=lambda i: i.sha256)
    below = sum(1 for i in by_hash if int(i.sha256, 16) < share * 2**256)
    return by_hash[:min(MAX_IMAGES, max(MIN_HELD_OUT, below))]


def choose_validation(data: ScanResult, folder: str | None, share: float, base_dir,
                      min_side: int, workers: int | None = None) -> tuple[ScanResult, ValidationSet]:
    """Returns the training images (the scan without the held-out ones) and the validation set."""
    from dataclasses import replace

    if folder:
        scan = scan_dataset(folder, base_dir, min_side=min_side, workers=workers)
        if not scan.accepted:
            raise PlanError(f"validation folder {folder!r} holds no usable image ({scan.summary()})")
        training = {i.sha256: i.path for i in data.accepted}
        both = [f"{display_path(i.path)} (= {training[i.sha256]})" for i in scan.accepted if i.sha256 in training]
        if both:
            raise PlanError(f"validation folder {folder!r} shares {len(both)} image(s) with the training data: "
                            + ", ".join(both[:5]) + ("…" if len(both) > 5 else "")
                            + "; remove them from one side")
        chosen = sorted(scan.accepted, key=lambda i: i.sha256)[:MAX_IMAGES]
        return data, ValidationSet(folder, "folder", tuple(chosen))
    held = held_out(data.accepted, share)
    if held:
        keep = {i.sha256 for i in held}
        training = replace(data, accepted=[i for i in data.accepted if i.sha256 not in keep])
        return training, ValidationSet(f"{len(held)} held out of {data.data or 'the data'}", "held-out", tuple(held))
    n = len(data.accepted)
    count = min(FALLBACK_IMAGES, n)
    chosen = [data.accepted[(2 * i + 1) * n // (2 * count)] for i in range(count)] if count else []
    why = "validation_share = 0" if share <= 0 else f"fewer than {MIN_TO_HOLD_OUT} images, none held out"
    return data, ValidationSet(f"training images ({why})", "training", tuple(chosen))


def build_validation_file(vset: ValidationSet) -> tuple[bytes, str]:
    """Returns the .npz of the set's crops (uint8 RGB, at most CROP a side) and its digest."""
    from shardrun.train.data import decode_rgb
    from shardrun.train.metrics import texture_crop

    arrays, names = {}, []
    for n, image in enumerate(vset.images):
        with open(image.source, "rb") as handle:
            rgb = decode_rgb(handle.read(), image.path)
        top, left = texture_crop(rgb, CROP)
        crop = rgb[top:top + CROP, left:left + CROP]
        arrays[f"crop_{n}"] = np.round(np.clip(crop, 0, 1) * 255).astype(np.uint8)
        names.append(image.path)
    meta = {"name": vset.name, "source": vset.source, "names": names}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    digest = hashlib.sha256(json.dumps([[i.sha256 for i in vset.images], CROP]).encode()).hexdigest()
    return buffer.getvalue(), digest


def upload_validation_set(vset: ValidationSet, home, job: str) -> dict:
    """Writes the set's crops to the home store; returns what the plan event records of it."""
    data, digest = build_validation_file(vset)
    stat = home.put_bytes(paths.validation_set_key(job, digest), data)
    return {"name": vset.name, "source": vset.source, "images": len(vset.images), "key": stat.key, "md5": stat.md5}


def read_validation_file(data: bytes) -> tuple[list[str], list[np.ndarray]]:
    """Returns the names and crops (float32 RGB in [0, 1]) of a validation set file."""
    with np.load(io.BytesIO(data)) as npz:
        meta = json.loads(npz["meta"].tobytes().decode())
        crops = [npz[f"crop_{n}"].astype(np.float32) / 255.0 for n in range(len(meta["names"]))]
    return meta["names"], crops


PICTURE_CROPS = 3  # crops per validation's pictures, each at most PICTURE_SIDE a side
PICTURE_SIDE = 96


def pictures_png(triples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[bytes, list[dict]]:
    """Returns one PNG of rows (bicubic | network | original, each at most PICTURE_SIDE a side, cut
    where the original has most texture) and each row's place in it (top, height, width)."""
    from PIL import Image

    from shardrun.train.metrics import texture_crop

    rows, places, top = [], [], 0
    for bicubic, network, original in triples[:PICTURE_CROPS]:
        y, x = texture_crop(original, PICTURE_SIDE)
        panels = [np.asarray(a, np.float32)[y:y + PICTURE_SIDE, x:x + PICTURE_SIDE] for a in (bicubic, network, original)]
        panels = [np.repeat(p, 3, axis=2) if p.ndim == 3 and p.shape[2] == 1 else p for p in panels]
        row = np.concatenate(panels, axis=1)
        rows.append(row)
        places.append({"top": top, "height": row.shape[0], "width": row.shape[1] // 3})
        top += row.shape[0]
    width = max(r.shape[1] for r in rows)
    canvas = np.ones((top, width, 3), np.float32)
    for row, place in zip(rows, places):
        canvas[place["top"]:place["top"] + row.shape[0], :row.shape[1]] = row
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue(), places

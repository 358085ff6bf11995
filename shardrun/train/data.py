"""The training input: images → (Y or RGB) → HR patches → bicubic LR, as a tf.data pipeline whose
sample order is a pure function of (seed, epoch, step).

Order. An epoch shows every image `patches_per_image` times. The images are put in a keyed
random order and cut into *windows* of `images_per_window` images; inside a window its
`n × patches_per_image` patches are put in a second keyed random order. So a batch mixes patches
of many images, while each image is decoded once per epoch (per window it falls in). Patch
positions are keyed on (seed, epoch, image, patch), so each epoch sees fresh crops.

Every key above is hashed with splitmix64 in plain numpy: the order depends on nothing but the
integers, not on numpy's or TensorFlow's random streams, which are free to change between
versions. Jumping to step k costs one argsort of the images (the epoch's order) and the decode
of one window, whatever k is.

The last batch of an epoch. An epoch has `steps_per_epoch = ceil(n·ppi / B)` steps; the last
batch is completed with the first samples of the *same* epoch's order (wrapping round as often
as needed for a tiny dataset), so every batch has exactly B samples (one traced shape) and an
epoch never borrows from the next one.

Pixels. PNG (8 or 16 bit) and JPEG are decoded by TensorFlow, outside Python's lock; anything
else (BMP) by Pillow. Either way an image becomes RGB floats in [0, 1]: grayscale and palette
images are expanded to three channels, alpha is dropped. A 1-channel run trains on BT.601 luma
Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255, the convention of SR benchmarks, so a grayscale
image g becomes 16/255 + 219/255 · g. The LR image is the bicubic (antialiased, as MATLAB's
imresize) reduction of the HR image cropped to a multiple of the scale; "upsampled" models get it
enlarged back by bicubic interpolation. Each patch is degraded inside a region of REGION_MARGIN
LR pixels around it, which gives the pixels the whole image would, for a fraction of the work.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shardrun.errors import ShardrunError
from shardrun.train.schedule import steps_per_epoch

# BT.601 luma for RGB in [0, 1], giving Y in [16, 235] / 255 (MATLAB's rgb2ycbcr).
Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
Y_OFFSET = 16.0 / 255.0

# LR pixels kept around a patch when degrading it: bicubic reduction reaches 2 LR pixels out
# (2·scale HR pixels) and bicubic enlargement 2 more, so 4 make the patch exact.
REGION_MARGIN = 4

# Hash domains, so that the image order, the slot order and the patch positions never share keys.
_IMAGE_ORDER, _SLOT_ORDER, _POSITION = 1, 2, 3


class DataError(ShardrunError):
    """An image or shard that the pipeline cannot use (too small, unreadable, truncated)."""


# --- image sources ---------------------------------------------------------------------------


class ImageSource(Protocol):
    """Where the encoded images come from. Index i is stable for a run."""

    def __len__(self) -> int:
        """Returns the number of images."""

    def read(self, index: int) -> bytes:
        """Returns the encoded bytes of image `index` (PNG, JPEG or BMP)."""

    def name(self, index: int) -> str:
        """Returns a display name for messages."""

    def size(self, index: int) -> tuple[int, int]:
        """Returns (width, height) without decoding the pixels."""


class MemoryImageSource:
    """Encoded images held in memory (tests, sample images, benchmarks)."""

    def __init__(self, images: Sequence[bytes], names: Sequence[str] | None = None):
        self._images = [bytes(image) for image in images]
        self._names = list(names) if names is not None else [
            f"image {i}" for i in range(len(self._images))
        ]
        self._sizes = [_header_size(data, name) for data, name in zip(self._images, self._names)]
        self.reads = 0  # how many times an image was read: tests count work with it

    def __len__(self) -> int:
        return len(self._images)

    def read(self, index: int) -> bytes:
        self.reads += 1
        return self._images[index]

    def name(self, index: int) -> str:
        return self._names[index]

    def size(self, index: int) -> tuple[int, int]:
        return self._sizes[index]


def _entry_field(entry: Any, key: str) -> Any:
    return entry[key] if isinstance(entry, Mapping) else getattr(entry, key)


class ShardImageSource:
    """Images read from local shard files: `size` bytes at `offset` of `<shard_dir>/<shard>.tar`.

    `entries` are manifest images (objects or dicts with path, shard, offset, size, sha256, width,
    height). With `verify`, each read is checked against the manifest's sha256.
    """

    def __init__(self, entries: Sequence[Any], shard_dir: Path | str, verify: bool = True):
        self._entries = [
            {key: _entry_field(e, key) for key in ("path", "shard", "offset", "size", "sha256",
                                                    "width", "height")}
            for e in entries
        ]
        self._dir = Path(shard_dir)
        self._verify = verify
        self.reads = 0

    def __len__(self) -> int:
        return len(self._entries)

    def shard_path(self, index: int) -> Path:
        """Returns the local file of the shard holding image `index`."""
        return self._dir / f"{self._entries[index]['shard']}.tar"

    def read(self, index: int) -> bytes:
        entry = self._entries[index]
        path = self.shard_path(index)
        try:
            with open(path, "rb") as handle:
                handle.seek(entry["offset"])
                data = handle.read(entry["size"])
        except OSError as error:
            raise DataError(f"cannot read {entry['path']} from shard {path}: {error}") from error
        if len(data) != entry["size"]:
            raise DataError(
                f"shard {path} is truncated: {entry['path']} needs {entry['size']} bytes at "
                f"offset {entry['offset']}, found {len(data)}"
            )
        if self._verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise DataError(f"{entry['path']} in shard {path} does not match its sha256")
        self.reads += 1
        return data

    def name(self, index: int) -> str:
        return self._entries[index]["path"]

    def size(self, index: int) -> tuple[int, int]:
        return self._entries[index]["width"], self._entries[index]["height"]


def _header_size(data: bytes, name: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{name} is not a readable image: {error}") from error


def decode_rgb(data: bytes, name: str = "image") -> np.ndarray:
    """Returns the image as float32 RGB in [0, 1], shape (H, W, 3), whatever its stored mode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode.startswith("I"):
                # 16-bit grayscale ("I;16", or "I" in newer Pillow): keep the full precision that
                # convert("RGB") would clip to 8 bits.
                gray = np.asarray(image, dtype=np.float32) / 65535.0
                return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)
            if image.mode == "F":
                gray = np.asarray(image, dtype=np.float32)
                return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{name} is not a readable image: {error}") from error
    return rgb / 255.0


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Returns BT.601 luma in [16/255, 235/255], shape (H, W, 1), of RGB floats in [0, 1]."""
    return (np.asarray(rgb, dtype=np.float64) @ Y_WEIGHTS + Y_OFFSET)[..., None]


# --- the order: a pure function of (seed, epoch, step) ----------------------------------------


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: a bijection on 64-bit integers that scrambles every bit.
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(*keys) -> np.ndarray:
    """Returns uint64 hashes of the broadcast integer keys."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(keys[0], dtype=np.uint64))
        for key in keys[1:]:
            h = _mix(h ^ np.asarray(key, dtype=np.uint64))
    return h


def _uniform(hashes: np.ndarray) -> np.ndarray:
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class WindowJob:
    """A piece of the sample stream: some samples of one window of one epoch, in order."""

    epoch: int
    window: int
    images: np.ndarray  # (n,) image indices of the window
    positions: np.ndarray  # (n, ppi, 2) patch positions as fractions in [0, 1)
    take: np.ndarray  # (m,) indices into the window's n*ppi patches (image-major), in order

    def samples(self, patches_per_image: int) -> np.ndarray:
        """Returns the (image, patch) pairs this job yields, shape (m, 2)."""
        return np.stack(
            [self.images[self.take // patches_per_image], self.take % patches_per_image], axis=1
        )


class SampleOrder:
    """Which (image, patch) pairs each training step sees, and where the patches lie."""

    def __init__(
        self,
        num_images: int,
        patches_per_image: int,
        batch_size: int,
        seed: int,
        images_per_window: int = 16,
    ):
        self.num_images = num_images
        self.patches_per_image = patches_per_image
        self.batch_size = batch_size
        self.seed = seed
        self.images_per_window = images_per_window
        self.steps_per_epoch = steps_per_epoch(num_images, patches_per_image, batch_size)
        self.samples_per_epoch = num_images * patches_per_image
        self.window_samples = images_per_window * patches_per_image
        self.hashed = 0  # keys hashed so far: tests count work with it
        self._orders: dict[int, np.ndarray] = {}

    def locate(self, step: int) -> tuple[int, int]:
        """Returns (epoch, step within the epoch) of a run's global step."""
        return divmod(step, self.steps_per_epoch)

    def image_order(self, epoch: int) -> np.ndarray:
        """Returns the image indices in the order epoch `epoch` visits them."""
        if epoch not in self._orders:
            keys = _hash(self.seed, epoch, _IMAGE_ORDER, np.arange(self.num_images))
            self.hashed += self.num_images
            # Two epochs are enough to remember: the stream only moves forward.
            self._orders = {k: v for k, v in self._orders.items() if k == epoch - 1}
            self._orders[epoch] = np.argsort(keys, kind="stable")
        return self._orders[epoch]

    def _window(self, epoch: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ppi = self.patches_per_image
        start = window * self.images_per_window
        images = self.image_order(epoch)[start:start + self.images_per_window]
        slots = np.argsort(
            _hash(self.seed, epoch, _SLOT_ORDER, window, np.arange(len(images) * ppi)),
            kind="stable",
        )
        positions = _uniform(
            _hash(self.seed, epoch, _POSITION, images[:, None, None],
                  np.arange(ppi)[None, :, None], np.arange(2)[None, None, :])
        )
        self.hashed += len(images) * ppi * 3
        return images, positions, slots

    def jobs(self, start_step: int) -> Iterator[WindowJob]:
        """Yields the sample stream from `start_step` on, window by window, without end."""
        epoch, step = self.locate(start_step)
        position = step * self.batch_size
        epoch_end = self.steps_per_epoch * self.batch_size
        while True:
            while position < epoch_end:
                # Positions past the epoch's samples complete the last batch from its start.
                sample = position % self.samples_per_epoch
                window, within = divmod(sample, self.window_samples)
                window_end = min((window + 1) * self.window_samples, self.samples_per_epoch)
                count = min(window_end - window * self.window_samples - within,
                            epoch_end - position)
                images, positions, slots = self._window(epoch, window)
                yield WindowJob(epoch, window, images, positions,
                                slots[within:within + count].astype(np.int64))
                position += count
            epoch, position = epoch + 1, 0

    def samples(self, step: int, steps: int = 1) -> np.ndarray:
        """Returns the (image, patch) pairs of `steps` batches from `step`, shape (n·B, 2)."""
        wanted = steps * self.batch_size
        found, total = [], 0
        for job in self.jobs(step):
            found.append(job.samples(self.patches_per_image))
            total += len(job.take)
            if total >= wanted:
                break
        return np.concatenate(found)[:wanted]


# --- the tf.data pipeline ----------------------------------------------------------------------


@dataclass(frozen=True)
class PatchSpec:
    """How training pairs are cut: scale, channels (1 = Y, 3 = RGB), HR patch side, model input."""

    scale: int
    channels: int
    patch_size: int
    input_kind: str  # "upsampled" or "low"

    @property
    def lr_patch(self) -> int:
        return self.patch_size // self.scale

    @property
    def input_patch(self) -> int:
        return self.patch_size if self.input_kind == "upsampled" else self.lr_patch


def check_image_sizes(source: ImageSource, patch_size: int, scale: int) -> None:
    """Returns nothing; raises DataError naming every image too small for one HR patch."""
    small = []
    for i in range(len(source)):
        width, height = source.size(i)
        if min(width - width % scale, height - height % scale) < patch_size:
            small.append(f"{source.name(i)} ({width}x{height})")
    if small:
        shown = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
        raise DataError(
            f"{len(small)} image(s) are smaller than patch_size={patch_size}: {shown}; "
            f"use a smaller patch_size or remove them"
        )


def degrade(hr, scale: int, input_kind: str):
    """Returns (model input, HR) tensors for an HR image tensor (H, W, C) in [0, 1].

    HR is cropped to a multiple of `scale`; the input is its bicubic reduction (antialiased, as
    MATLAB's imresize), enlarged back by bicubic interpolation for "upsampled" models.
    """
    import tensorflow as tf

    shape = tf.shape(hr)
    height, width = shape[0] - shape[0] % scale, shape[1] - shape[1] % scale
    hr = hr[:height, :width]
    low = tf.image.resize(hr, [height // scale, width // scale], "bicubic", antialias=True)
    low = tf.clip_by_value(low, 0.0, 1.0)
    if input_kind == "upsampled":
        low = tf.clip_by_value(tf.image.resize(low, [height, width], "bicubic"), 0.0, 1.0)
    return low, hr


def to_channels(rgb, channels: int):
    """Returns the RGB tensor (…, 3) itself or its BT.601 luma (…, 1)."""
    import tensorflow as tf

    if channels == 3:
        return rgb
    weights = tf.constant(Y_WEIGHTS, dtype=rgb.dtype)
    return tf.tensordot(rgb, weights, axes=[[-1], [0]])[..., None] + Y_OFFSET


def decode_tf(raw, fallback):
    """Returns RGB float32 in [0, 1] of encoded image bytes, decoded by TensorFlow for PNG
    (8 or 16 bit) and JPEG, and by `fallback()` (Pillow) for anything else (BMP).

    TensorFlow decodes without holding Python's lock, so parallel calls really run in parallel.
    Its BMP decoder ignores palettes, hence the fallback.
    """
    import tensorflow as tf

    def png():
        # Byte 24 of a PNG is the bit depth of its first (IHDR) chunk.
        sixteen = tf.equal(tf.strings.substr(raw, 24, 1), b"\x10")
        return tf.cond(
            sixteen,
            lambda: tf.cast(tf.io.decode_png(raw, 3, dtype=tf.uint16), tf.float32) / 65535.0,
            lambda: tf.cast(tf.io.decode_png(raw, 3), tf.float32) / 255.0,
        )

    def jpeg():
        return tf.cast(tf.io.decode_jpeg(raw, 3, dct_method="INTEGER_ACCURATE"), tf.float32) / 255.0

    magic = tf.strings.substr(raw, 0, 4)
    return tf.case(
        [(tf.equal(magic, b"\x89PNG"), png),
         (tf.equal(tf.strings.substr(raw, 0, 2), b"\xff\xd8"), jpeg)],
        default=fallback,
    )


def make_dataset(
    source: ImageSource,
    order: SampleOrder,
    spec: PatchSpec,
    start_step: int = 0,
    *,
    parallel: bool = True,
    with_ids: bool = False,
):
    """Returns a tf.data.Dataset of batches (input, HR) from `start_step` on, without end.

    With `with_ids`, each batch also carries its (image, patch) pairs, shape (B, 2). With
    `parallel=False` nothing is read ahead (tests count reads with it).
    """
    import tensorflow as tf

    ppi = order.patches_per_image
    scale, size, low = spec.scale, spec.patch_size, spec.lr_patch
    autotune = tf.data.AUTOTUNE if parallel else None
    ordered = True if parallel else None  # tf.data warns about `deterministic` when sequential

    def jobs():
        for job in order.jobs(start_step):
            yield job.images, job.positions, job.take

    def read(index):
        return source.read(int(index.numpy()))

    def pillow_decode(raw, index):
        return decode_rgb(raw.numpy(), source.name(int(index.numpy())))

    def decode(index):
        raw = tf.py_function(read, [index], tf.string)
        raw.set_shape([])
        rgb = decode_tf(raw, lambda: tf.py_function(pillow_decode, [raw, index], tf.float32))
        rgb.set_shape([None, None, 3])
        return rgb

    def gather_windows(images, starts, side):
        # images: (ppi, H, W, C); starts: (ppi, 2); returns each image's side x side window.
        rows = starts[:, :1] + tf.range(side)[None, :]
        cols = starts[:, 1:] + tf.range(side)[None, :]
        images = tf.gather(images, rows, axis=1, batch_dims=1)
        return tf.gather(images, cols, axis=2, batch_dims=1)

    def patches(index, positions):
        rgb = decode(index)
        shape = tf.shape(rgb)
        lr_shape = shape[:2] // scale  # the LR grid of the image cropped to a multiple of scale
        # Positions are on the LR grid, so the HR patch and its LR patch cover the same pixels.
        spans = lr_shape - low + 1
        corners = tf.cast(tf.floor(positions * tf.cast(spans, tf.float64)), tf.int32)
        # Each patch is degraded inside a fixed-size region around it, with REGION_MARGIN LR
        # pixels on every side (moved inwards at the image's edges): the bicubic kernels then see
        # the same pixels as on the whole image, at a fraction of the cost.
        region = tf.minimum(low + 2 * REGION_MARGIN, lr_shape)
        origins = tf.clip_by_value(corners - REGION_MARGIN, 0, lr_shape - region)
        hr_regions = tf.stack([
            rgb[origins[k, 0] * scale:(origins[k, 0] + region[0]) * scale,
                origins[k, 1] * scale:(origins[k, 1] + region[1]) * scale]
            for k in range(ppi)
        ])
        hr_regions = to_channels(hr_regions, spec.channels)
        lr_regions = tf.clip_by_value(
            tf.image.resize(hr_regions, region, "bicubic", antialias=True), 0.0, 1.0)
        offsets = corners - origins
        hrs = gather_windows(hr_regions, offsets * scale, size)
        if spec.input_kind == "upsampled":
            up = tf.clip_by_value(
                tf.image.resize(lr_regions, region * scale, "bicubic"), 0.0, 1.0)
            ins = gather_windows(up, offsets * scale, size)
        else:
            ins = gather_windows(lr_regions, offsets, low)
        ids = tf.stack([tf.fill([ppi], index), tf.range(ppi, dtype=tf.int64)], axis=1)
        return ins, hrs, ids

    def window(images, positions, take):
        per_image = tf.data.Dataset.from_tensor_slices((images, positions)).map(
            patches, num_parallel_calls=autotune, deterministic=ordered
        )

        def pick(ins, hrs, ids):
            flat = lambda t: tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))  # noqa: E731
            return tuple(tf.gather(flat(t), take) for t in (ins, hrs, ids))

        # One batch holds the whole window (at most images_per_window images).
        return per_image.batch(order.images_per_window).map(pick).unbatch()

    stream = tf.data.Dataset.from_generator(
        jobs,
        output_signature=(
            tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None, ppi, 2], tf.float64),
            tf.TensorSpec([None], tf.int64),
        ),
    )
    # Each window yields at most block_length samples, so the interleave emits window after
    # window in order while decoding the next one in parallel.
    samples = stream.interleave(
        window,
        cycle_length=2 if parallel else 1,
        block_length=order.window_samples,
        num_parallel_calls=2 if parallel else None,
        deterministic=ordered,
    )
    batches = samples.batch(order.batch_size, drop_remainder=True)
    c = spec.channels
    batches = batches.map(
        lambda ins, hrs, ids: (
            tf.ensure_shape(ins, [order.batch_size, spec.input_patch, spec.input_patch, c]),
            tf.ensure_shape(hrs, [order.batch_size, size, size, c]),
            ids,
        )
    )
    if not with_ids:
        batches = batches.map(lambda ins, hrs, ids: (ins, hrs))
    options = tf.data.Options()
    options.deterministic = True
    if not parallel:
        # No read-ahead of any kind, so that the images read are exactly those asked for.
        options.autotune.enabled = False
        options.experimental_optimization.inject_prefetch = False
    batches = batches.with_options(options)
    return batches.prefetch(tf.data.AUTOTUNE) if parallel else batches

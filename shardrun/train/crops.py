"""The training input with the work on the device: the host gathers uint8 crops from decoded
images (cache.py), and the compiled training step turns them into (input, HR) pairs.

It gives the same samples in the same order with the same pixels as data.py's `make_dataset`:
the same keyed positions (floored in float64 on the host as there), the same regions of
REGION_MARGIN LR pixels around each patch, the same float32 operations in the same order
(integers → [0, 1] → Y or RGB → antialiased bicubic → clip → window), only run on a batch of B
regions instead of an image's `patches_per_image`. tests/train/test_crops.py compares both
pipelines' batches bit for bit.

One difference, on purpose: a batch needs one region shape, so the region is the same for every
image of a run, `min(lr_patch + 2·REGION_MARGIN, the smallest image's LR side)` per axis. It is
make_dataset's whenever every image is at least `(lr_patch + 2·REGION_MARGIN)·scale` pixels on each
side (41-pixel patches at ×2: 58 pixels); a dataset with smaller images gets a thinner margin on
its large images, so pixels near a patch's edge may differ from make_dataset's in the last bits.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from shardrun.train.cache import DecodedImages
from shardrun.train.data import REGION_MARGIN, PatchSpec, SampleOrder, to_channels


def region_shape(images: DecodedImages, spec: PatchSpec) -> tuple[int, int]:
    """Returns the LR (rows, cols) of the region cropped around every patch of a run."""
    low = spec.lr_patch
    widths, heights = zip(*(images.source.size(i) for i in range(len(images.source))))
    return (min(low + 2 * REGION_MARGIN, min(heights) // spec.scale),
            min(low + 2 * REGION_MARGIN, min(widths) // spec.scale))


class CropStream:
    """Yields batches of (HR regions as integers (B, R·s, R·s, 3), patch offsets in the region on
    the LR grid (B, 2) int32, (image, patch) ids (B, 2)) from a step on."""

    def __init__(self, images: DecodedImages, order: SampleOrder, spec: PatchSpec):
        self.images, self.order, self.spec = images, order, spec
        self.region = region_shape(images, spec)

    def batches(self, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yields the batches from `start_step` on, without end."""
        batch, ppi = self.order.batch_size, self.order.patches_per_image
        scale, low = self.spec.scale, self.spec.lr_patch
        rows, cols = self.region
        dtype = self.images.dtype
        crops = np.empty((batch, rows * scale, cols * scale, 3), dtype)
        offsets = np.empty((batch, 2), np.int32)
        ids = np.empty((batch, 2), np.int64)
        filled = 0
        for job in self.order.jobs(start_step):
            self.images.ensure(job.images)
            slots = job.take // ppi
            for slot, patch in zip(slots.tolist(), (job.take % ppi).tolist()):
                index = int(job.images[slot])
                pixels = self.images.pixels(index)
                lr_shape = np.array(pixels.shape[:2]) // scale
                # As make_dataset: positions are fractions of the LR positions a patch can take.
                corner = np.floor(job.positions[slot, patch] * (lr_shape - low + 1)).astype(np.int64)
                origin = np.clip(corner - REGION_MARGIN, 0, lr_shape - (rows, cols))
                r, c = origin * scale
                crops[filled] = pixels[r:r + rows * scale, c:c + cols * scale]
                offsets[filled] = corner - origin
                ids[filled] = index, patch
                filled += 1
                if filled == batch:
                    yield crops.copy(), offsets.copy(), ids.copy()
                    filled = 0


def crop_dataset(images: DecodedImages, order: SampleOrder, spec: PatchSpec, start_step: int = 0,
                 *, with_ids: bool = False, prefetch: int = 4):
    """Returns a tf.data.Dataset of (crops, offsets[, ids]) batches from `start_step` on, without
    end; `device_pairs` turns each into (input, HR)."""
    import tensorflow as tf

    stream = CropStream(images, order, spec)
    rows, cols = stream.region
    batch, scale = order.batch_size, spec.scale
    dataset = tf.data.Dataset.from_generator(
        lambda: stream.batches(start_step),
        output_signature=(
            tf.TensorSpec([batch, rows * scale, cols * scale, 3], tf.as_dtype(images.dtype)),
            tf.TensorSpec([batch, 2], tf.int32),
            tf.TensorSpec([batch, 2], tf.int64),
        ),
    )
    if not with_ids:
        dataset = dataset.map(lambda crops, offsets, ids: (crops, offsets))
    return dataset.prefetch(prefetch) if prefetch else dataset


def _windows(images, starts, side: int):
    import tensorflow as tf

    rows = starts[:, :1] + tf.range(side)[None, :]
    cols = starts[:, 1:] + tf.range(side)[None, :]
    images = tf.gather(images, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def unit_table(dtype) -> np.ndarray:
    """Returns the float32 pixel in [0, 1] of every value of an integer type: v / full scale,
    rounded once, as the decoders' `tf.cast(v, float32) / 255.0` gives it.

    A lookup rather than a division in the graph: graph optimisers rewrite a division by a
    constant as a multiplication by its reciprocal, which differs in the last bit."""
    top = np.iinfo(dtype).max
    return np.arange(top + 1, dtype=np.float32) / np.float32(top)


def resize_matrix(in_len: int, out_len: int, antialias: bool) -> np.ndarray:
    """Returns the (out_len, in_len) float32 matrix of TensorFlow's bicubic resize along one axis
    (`tf.image.resize(..., "bicubic", antialias=...)`), read off the resize itself.

    The resize is linear and separable, so resizing the identity gives its weights; an axis kept
    at its length is resized by the identity (Keys' cubic is 1 at 0 and 0 at ±1, ±2)."""
    import tensorflow as tf

    key = (in_len, out_len, antialias)
    if key not in _MATRICES:
        # Eagerly, even when called while a tf.function traces: the matrix is a constant.
        with tf.init_scope(), tf.device("/CPU:0"):
            eye = tf.eye(in_len, dtype=tf.float32)[:, :, None]
            weights = tf.image.resize(eye, [out_len, in_len], "bicubic", antialias=antialias)
        _MATRICES[key] = weights.numpy()[:, :, 0]
    return _MATRICES[key]


_MATRICES: dict[tuple[int, int, bool], np.ndarray] = {}


def device_pairs(crops, offsets, spec: PatchSpec):
    """Returns (model input, HR) float32 batches of a crop batch: made where it runs, inside the
    compiled step on the device.

    The bicubic reduction and enlargement are products with fixed matrices (`resize_matrix`),
    not TensorFlow's resize ops: those have no GPU or XLA kernel with antialiasing, a matrix
    product has every kernel. They sum in another order, so pixels agree with make_dataset's to
    within a few float32 ulps (tests/train/test_crops.py pins 2e-6), not bit for bit.
    """
    import tensorflow as tf

    scale, size, low = spec.scale, spec.patch_size, spec.lr_patch
    rows, cols = crops.shape[1] // scale, crops.shape[2] // scale
    table = tf.constant(unit_table(crops.dtype.as_numpy_dtype))
    hr_regions = to_channels(tf.gather(table, tf.cast(crops, tf.int32)), spec.channels)

    def resize(x, along_rows, along_cols):
        x = tf.einsum("ij,bjkc->bikc", tf.constant(along_rows), x)
        return tf.einsum("lk,bikc->bilc", tf.constant(along_cols), x)

    lr_regions = tf.clip_by_value(resize(
        hr_regions, resize_matrix(rows * scale, rows, True),
        resize_matrix(cols * scale, cols, True)), 0.0, 1.0)
    hrs = _windows(hr_regions, offsets * scale, size)
    if spec.input_kind == "upsampled":
        up = tf.clip_by_value(resize(
            lr_regions, resize_matrix(rows, rows * scale, False),
            resize_matrix(cols, cols * scale, False)), 0.0, 1.0)
        ins = _windows(up, offsets * scale, size)
    else:
        ins = _windows(lr_regions, offsets, low)
    return ins, hrs

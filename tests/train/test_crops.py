"""The input on the device: decoded-image cache (cache.py) and crops degraded in the step
(crops.py) give make_dataset's samples, in its order, with its pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from shardrun.train.cache import DecodedImages, decode_pixels
from shardrun.train.crops import crop_dataset, device_pairs, region_shape
from shardrun.train.data import MemoryImageSource, PatchSpec, SampleOrder, decode_rgb, make_dataset

# The pairs' inputs agree with make_dataset's within this: the bicubic resize is a matrix product
# here and TensorFlow's resize op there, which sum the same terms in another order (a few ulps of
# values in [0, 1]). The HR patches agree bit for bit.
INPUT_TOLERANCE = 1e-6


def _png(pixels, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mixed():
    """8-bit RGB PNGs, a grayscale JPEG, a palette BMP (Pillow's decoder) of assorted sizes."""
    rng = np.random.default_rng(4)
    blobs = [_png(rng.integers(0, 256, (40 + 7 * i, 52 - 3 * i, 3), dtype=np.uint8))
             for i in range(4)]
    smooth = np.add.outer(np.arange(48), np.arange(50)).astype(np.uint8) * 2
    blobs.append(_png(smooth, "JPEG"))
    blobs.append(_bmp(rng))
    return MemoryImageSource(blobs, [f"m{i}" for i in range(len(blobs))])


def _bmp(rng):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (44, 46, 3), dtype=np.uint8)).convert("P").save(buffer, "BMP")
    return buffer.getvalue()


def _compare(source, spec, order, start, batches=6, jit=False):
    old = make_dataset(source, order, spec, start, with_ids=True)
    new = crop_dataset(DecodedImages(source), order, spec, start, with_ids=True)
    pairs = tf.function(lambda c, o: device_pairs(c, o, spec), jit_compile=jit)
    for (want_in, want_hr, want_ids), (crops, offsets, ids) in zip(old.take(batches), new.take(batches)):
        got_in, got_hr = pairs(crops, offsets)
        np.testing.assert_array_equal(ids.numpy(), want_ids.numpy())
        if jit:
            np.testing.assert_allclose(got_hr.numpy(), want_hr.numpy(), atol=INPUT_TOLERANCE, rtol=0)
        else:
            np.testing.assert_array_equal(got_hr.numpy(), want_hr.numpy())
        np.testing.assert_allclose(got_in.numpy(), want_in.numpy(), atol=INPUT_TOLERANCE, rtol=0)


@pytest.mark.parametrize("channels, kind, scale", [(1, "low", 2), (3, "upsampled", 2), (1, "upsampled", 3),
                                                   (3, "low", 4)])
def test_batches_are_the_old_pipelines_samples_order_and_pixels(mixed, channels, kind, scale):
    spec = PatchSpec(scale, channels, 12 if scale < 4 else 16, kind)
    _compare(mixed, spec, SampleOrder(len(mixed), 3, 5, seed=7, images_per_window=2), start=4)


def test_the_xla_compiled_degradation_agrees_too(mixed):
    _compare(mixed, PatchSpec(2, 1, 12, "upsampled"), SampleOrder(len(mixed), 3, 5, 1, 2), 0, 3,
             jit=True)


def test_sixteen_bit_images_keep_their_precision_beside_eight_bit_ones(mixed):
    deep = np.random.default_rng(1).integers(0, 65536, (40, 40), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, "PNG")
    blobs = [mixed.read(0), buffer.getvalue()]
    source = MemoryImageSource(blobs)
    images = DecodedImages(source)
    assert images.dtype == np.uint16
    # 8-bit values times 257 over 65535 are the same floats as over 255.
    np.testing.assert_array_equal(images.pixels(0) / np.float32(65535), decode_rgb(blobs[0]))
    np.testing.assert_allclose(images.pixels(1)[..., 0] / 65535.0, deep / 65535.0, atol=0)
    _compare(source, PatchSpec(2, 1, 12, "low"), SampleOrder(2, 4, 4, 2, 2), 1, 3)


def test_the_region_is_make_datasets_and_shrinks_only_for_small_images(mixed):
    assert region_shape(DecodedImages(mixed), PatchSpec(2, 1, 12, "low")) == (6 + 8, 6 + 8)
    small = MemoryImageSource([_png(np.zeros((20, 30, 3), np.uint8))])
    assert region_shape(DecodedImages(small), PatchSpec(2, 1, 12, "low")) == (10, 14)


def test_each_image_is_decoded_once_per_session_and_reused_from_the_folder(mixed, tmp_path):
    order, spec = SampleOrder(len(mixed), 3, 5, 7, 2), PatchSpec(2, 1, 12, "low")
    images = DecodedImages(mixed, tmp_path)
    first = [c.numpy() for c, _ in crop_dataset(images, order, spec, 0).take(3 * order.steps_per_epoch)]
    assert images.decodes == len(mixed)  # three epochs, one decode per image
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".npy"] * 6 + [".sha256"] * 6
    again = DecodedImages(mixed, tmp_path)  # another trainer on the same machine
    second = [c.numpy() for c, _ in crop_dataset(again, order, spec, 0).take(len(first))]
    assert again.decodes == 0
    assert isinstance(again.pixels(0), np.memmap)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_cache_entry_is_decoded_again(mixed, tmp_path):
    DecodedImages(mixed, tmp_path).ensure(range(len(mixed)))
    entry = sorted(tmp_path.glob("*.npy"))[0]
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF
    entry.write_bytes(bytes(data))
    fresh = DecodedImages(mixed, tmp_path)
    fresh.ensure(range(len(mixed)))
    assert fresh.decodes == 1
    for i in range(len(mixed)):
        np.testing.assert_array_equal(fresh.pixels(i), decode_pixels(mixed.read(i)))


def test_the_cache_folder_stays_under_its_cap(mixed, tmp_path):
    one = DecodedImages(mixed).pixels(0).nbytes + 128
    images = DecodedImages(mixed, tmp_path, cap_bytes=3 * one)
    images.ensure(range(len(mixed)))
    assert sum(p.stat().st_size for p in tmp_path.glob("*.npy")) <= 3 * one
    for i in range(len(mixed)):  # those that did not fit are at hand in memory
        np.testing.assert_array_equal(images.pixels(i), decode_pixels(mixed.read(i)))
    # A later object removes the entries it does not hold to make room for its own.
    later = DecodedImages(MemoryImageSource([_png(np.full((40, 52, 3), 9, np.uint8))]), tmp_path,
                          cap_bytes=3 * one)
    later.ensure([0])
    assert isinstance(later.pixels(0), np.memmap)
    assert sum(p.stat().st_size for p in tmp_path.glob("*.npy")) <= 3 * one

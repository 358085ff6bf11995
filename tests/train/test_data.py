"""The data pipeline: decoding every stored mode, the keyed sample order, exact resume of the
stream, patch geometry, shard reading, and the contract both ImageSource implementations meet."""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shardrun.train.data import (
    DataError,
    MemoryImageSource,
    PatchSpec,
    SampleOrder,
    ShardImageSource,
    check_image_sizes,
    decode_rgb,
    decode_tf,
    make_dataset,
    rgb_to_y,
)
from shardrun.train.schedule import steps_per_epoch


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    image = Image.fromarray(pixels)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def random_rgb(seed: int, height: int = 36, width: int = 44) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, mode",
    [("PNG", None), ("PNG", "L"), ("PNG", "P"), ("PNG", "RGBA"), ("PNG", "LA"),
     ("BMP", None), ("BMP", "L"), ("BMP", "P")],
)
def test_lossless_images_decode_to_their_rgb_pixels(fmt, mode):
    data = encode(random_rgb(1), fmt, mode)
    with Image.open(io.BytesIO(data)) as image:
        expected = np.asarray(image.convert("RGB"), np.float32) / 255
    decoded = decode_rgb(data)
    assert decoded.shape == (36, 44, 3) and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, expected)


def test_grayscale_is_repeated_into_three_channels():
    gray = random_rgb(2)[..., 0]
    decoded = decode_rgb(encode(gray))
    for c in range(3):
        np.testing.assert_array_equal(decoded[..., c], gray / np.float32(255))


def test_sixteen_bit_grayscale_keeps_its_precision():
    values = np.arange(36 * 44, dtype=np.uint16).reshape(36, 44) * 37
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "PNG")  # a 16-bit grayscale PNG
    decoded = decode_rgb(buffer.getvalue())
    np.testing.assert_allclose(decoded[..., 0], values / 65535.0, atol=1e-7)
    assert len(np.unique(decoded)) == values.size  # more than 256 levels survive


@pytest.mark.parametrize(
    "fmt, mode",
    [("PNG", None), ("PNG", "L"), ("PNG", "P"), ("PNG", "RGBA"), ("PNG", "I;16"), ("JPEG", None),
     ("JPEG", "L"), ("BMP", "P"), ("BMP", None)],
)
def test_the_pipelines_decoder_agrees_with_pillow(fmt, mode):
    pixels = random_rgb(5)
    if mode == "I;16":
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0].astype(np.uint16) * 251).save(buffer, "PNG")
        data = buffer.getvalue()
    else:
        data = encode(pixels, fmt, mode)
    used_fallback = []

    def fallback():
        used_fallback.append(True)
        return tf.constant(decode_rgb(data))

    decoded = decode_tf(tf.constant(data), fallback).numpy()
    expected = decode_rgb(data)
    assert decoded.shape == expected.shape
    # JPEG decoders may round the inverse DCT differently by a level or so.
    tolerance = 2.5 / 255 if fmt == "JPEG" else 1e-6
    np.testing.assert_allclose(decoded, expected, atol=tolerance)
    assert bool(used_fallback) == (fmt == "BMP")


def test_jpeg_decodes_close_to_its_source():
    pixels = np.full((32, 32, 3), (200, 40, 90), np.uint8)
    decoded = decode_rgb(encode(pixels, "JPEG"))
    assert np.abs(decoded * 255 - pixels).max() < 6


def test_unreadable_bytes_name_the_image():
    with pytest.raises(DataError, match="broken.png is not a readable image"):
        decode_rgb(b"not an image", "broken.png")
    with pytest.raises(DataError, match="x.png is not a readable image"):
        MemoryImageSource([b"junk"], ["x.png"])


def test_luma_is_bt601_studio_range():
    rgb = np.array([[[0, 0, 0], [1, 1, 1], [1, 0, 0]]], np.float64)
    np.testing.assert_allclose(rgb_to_y(rgb)[0, :, 0], [16 / 255, 235 / 255, (16 + 65.481) / 255])


# --- the order --------------------------------------------------------------------------------


def test_every_epoch_shows_each_patch_of_each_image_once_and_fills_the_last_batch_from_its_start():
    order = SampleOrder(num_images=7, patches_per_image=5, batch_size=8, seed=3, images_per_window=3)
    per_epoch = order.steps_per_epoch
    assert per_epoch == steps_per_epoch(7, 5, 8) == 5
    stream = order.samples(0, 3 * per_epoch)
    for epoch in range(3):
        batches = stream[epoch * per_epoch * 8:(epoch + 1) * per_epoch * 8]
        seen = batches[:35]
        assert sorted(map(tuple, seen)) == [(i, k) for i in range(7) for k in range(5)]
        np.testing.assert_array_equal(batches[35:], seen[:5])  # 40 - 35 samples wrap round
    # Epochs are shuffled differently.
    assert not np.array_equal(stream[:35], stream[40:75])


def test_a_tiny_dataset_wraps_round_as_often_as_a_batch_needs():
    order = SampleOrder(num_images=1, patches_per_image=3, batch_size=8, seed=0)
    batch = order.samples(0)
    assert order.steps_per_epoch == 1 and len(batch) == 8
    np.testing.assert_array_equal(batch[3:6], batch[:3])


def test_batches_mix_patches_of_several_images():
    order = SampleOrder(num_images=64, patches_per_image=16, batch_size=16, seed=1)
    assert all(len(set(order.samples(step)[:, 0])) >= 4 for step in range(10))


def test_the_order_is_a_pure_function_of_seed_epoch_and_step():
    first = SampleOrder(20, 4, 6, seed=5).samples(37, 3)
    again = SampleOrder(20, 4, 6, seed=5).samples(37, 3)
    other = SampleOrder(20, 4, 6, seed=6).samples(37, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    jobs = SampleOrder(20, 4, 6, seed=5).jobs(0)
    positions = [next(jobs).positions for _ in range(2)]
    assert positions[0].shape[1:] == (4, 2) and 0 <= positions[0].min() and positions[0].max() < 1


@settings(max_examples=40, deadline=None)
@given(
    num_images=st.integers(1, 30),
    ppi=st.integers(1, 6),
    batch=st.integers(1, 20),
    window=st.integers(1, 5),
    cuts=st.lists(st.integers(0, 60), max_size=4),
)
def test_resuming_the_stream_at_any_steps_neither_replays_nor_skips(num_images, ppi, batch, window, cuts):
    order = SampleOrder(num_images, ppi, batch, seed=11, images_per_window=window)
    total = 61
    straight = order.samples(0, total)
    bounds = sorted(set([0, total] + cuts))
    pieces = [SampleOrder(num_images, ppi, batch, seed=11, images_per_window=window)
              .samples(a, b - a) for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_array_equal(np.concatenate(pieces), straight)


def test_jumping_far_costs_the_same_work_as_jumping_near():
    # Locating a step hashes one epoch's image keys and one window's slots and positions.
    hashed = {}
    for step in (10, 10_000_000):
        order = SampleOrder(40, 4, 8, seed=2, images_per_window=4)
        next(order.jobs(step))
        hashed[step] = order.hashed
    assert hashed[10] == hashed[10_000_000] == 40 + 4 * 4 * 3
    # And the pipeline decodes only the first window's images before the first batch.
    source = MemoryImageSource([encode(random_rgb(i, 16, 16)) for i in range(40)])
    spec = PatchSpec(scale=2, channels=1, patch_size=8, input_kind="low")
    reads = {}
    for step in (10, 10_000_000):
        source.reads = 0
        order = SampleOrder(40, 4, 8, seed=2, images_per_window=4)
        _, _, ids = next(iter(make_dataset(source, order, spec, step, parallel=False, with_ids=True)))
        np.testing.assert_array_equal(ids.numpy(), order.samples(step))
        reads[step] = source.reads
    # Both steps start a window (8 * 10 % 16 == 0, and 10,000,000 is a multiple of the 20 steps
    # of an epoch), so each first batch comes from the 4 images of one window.
    assert reads[10] == reads[10_000_000] == 4


# --- the pipeline -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos():
    # Sizes from barely a few patches to several: patches at the edges and in the interior.
    return [random_rgb(i, 30 + 13 * i, 70 - 9 * i) for i in range(5)]


def _source(photos, grayscale=()):
    return MemoryImageSource(
        [encode(p[..., 0] if i in grayscale else p) for i, p in enumerate(photos)],
        [f"p{i}.png" for i in range(len(photos))],
    )


def _expected_pair(rgb: np.ndarray, spec: PatchSpec, position: np.ndarray, channels: int):
    """The pair computed independently: whole-image luma/RGB, bicubic reduction, then crops."""
    image = rgb_to_y(rgb / 255.0) if channels == 1 else rgb / 255.0
    s, size = spec.scale, spec.patch_size
    h, w = image.shape[0] // s * s, image.shape[1] // s * s
    hr = image[:h, :w].astype(np.float32)
    low = np.clip(tf.image.resize(hr, [h // s, w // s], "bicubic", antialias=True).numpy(), 0, 1)
    y, x = (np.floor(position * [h // s - size // s + 1, w // s - size // s + 1])).astype(int)
    hr_patch = hr[y * s:y * s + size, x * s:x * s + size]
    if spec.input_kind == "low":
        return low[y:y + size // s, x:x + size // s], hr_patch
    up = np.clip(tf.image.resize(low, [h, w], "bicubic").numpy(), 0, 1)
    return up[y * s:y * s + size, x * s:x * s + size], hr_patch


@pytest.mark.parametrize("channels, kind", [(1, "low"), (3, "upsampled")])
def test_patches_are_the_crops_of_the_keyed_positions(photos, channels, kind):
    spec = PatchSpec(scale=2, channels=channels, patch_size=12, input_kind=kind)
    order = SampleOrder(len(photos), 3, 4, seed=9, images_per_window=2)
    inputs, hrs, ids = next(iter(make_dataset(_source(photos), order, spec, 2, with_ids=True)))
    assert inputs.shape == (4, spec.input_patch, spec.input_patch, channels)
    assert hrs.shape == (4, 12, 12, channels)
    positions = {}
    for job in SampleOrder(len(photos), 3, 4, seed=9, images_per_window=2).jobs(0):
        for j, image in enumerate(job.images):
            positions[int(image)] = job.positions[j]
        if len(positions) == len(photos):
            break
    for n, (image, patch) in enumerate(ids.numpy()):
        expected_in, expected_hr = _expected_pair(photos[image], spec, positions[image][patch], channels)
        np.testing.assert_allclose(hrs[n].numpy(), expected_hr, atol=1e-6)
        np.testing.assert_allclose(inputs[n].numpy(), expected_in, atol=1e-5)


def test_the_pipeline_resumed_at_a_step_gives_the_same_pixels(photos):
    spec = PatchSpec(scale=3, channels=1, patch_size=12, input_kind="upsampled")
    order = SampleOrder(len(photos), 4, 3, seed=4, images_per_window=2)
    source = _source(photos)
    straight = [b for b in make_dataset(source, order, spec, 0).take(9)]
    resumed = [b for b in make_dataset(source, order, spec, 6).take(3)]
    for (a_in, a_hr), (b_in, b_hr) in zip(straight[6:], resumed):
        np.testing.assert_array_equal(a_in.numpy(), b_in.numpy())
        np.testing.assert_array_equal(a_hr.numpy(), b_hr.numpy())


def test_grayscale_images_feed_an_rgb_run_and_rgb_images_a_y_run(photos):
    source = _source(photos, grayscale={0, 1, 2, 3, 4})
    rgb_spec = PatchSpec(scale=2, channels=3, patch_size=8, input_kind="low")
    _, hr = next(iter(make_dataset(source, SampleOrder(5, 2, 4, 0), rgb_spec)))
    assert hr.shape[-1] == 3
    np.testing.assert_array_equal(hr[..., 0].numpy(), hr[..., 2].numpy())
    y_spec = PatchSpec(scale=2, channels=1, patch_size=8, input_kind="low")
    _, hr = next(iter(make_dataset(_source(photos), SampleOrder(5, 2, 4, 0), y_spec)))
    assert hr.shape[-1] == 1
    assert 16 / 255 - 1e-6 <= hr.numpy().min() and hr.numpy().max() <= 235 / 255 + 1e-6


def test_images_smaller_than_a_patch_are_all_named():
    images = [encode(random_rgb(i, h, w)) for i, (h, w) in enumerate([(40, 40), (20, 50), (50, 21)])]
    source = MemoryImageSource(images, ["ok.png", "short.png", "narrow.png"])
    with pytest.raises(DataError, match=r"2 image\(s\) are smaller than patch_size=22: short.png \(50x20\), narrow.png \(21x50\)"):
        check_image_sizes(source, 22, 2)
    check_image_sizes(source, 20, 2)


# --- shards ---------------------------------------------------------------------------------------


def _write_shard(path, blobs):
    entries = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for n, data in enumerate(blobs):
            info = tarfile.TarInfo(f"images/{n}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        for n, member in enumerate(tar.getmembers()):
            with Image.open(io.BytesIO(blobs[n])) as image:
                width, height = image.size
            entries.append({"path": f"img{n}", "shard": path.stem, "offset": member.offset_data,
                            "size": member.size, "sha256": hashlib.sha256(blobs[n]).hexdigest(),
                            "width": width, "height": height, "channels": 3})
    return entries


def test_shard_source_reads_each_image_at_its_offset(tmp_path):
    blobs = [encode(random_rgb(1), "PNG"), encode(random_rgb(2), "JPEG"),
             encode(random_rgb(3)[..., 0], "BMP")]
    entries = _write_shard(tmp_path / "shard-abc.tar", blobs)
    source = ShardImageSource(entries, tmp_path)
    assert len(source) == 3 and source.name(1) == "img1" and source.size(2) == (44, 36)
    assert [source.read(i) for i in range(3)] == blobs
    spec = PatchSpec(scale=2, channels=1, patch_size=8, input_kind="low")
    _, hr, ids = next(iter(make_dataset(source, SampleOrder(3, 2, 6, 1), spec, with_ids=True)))
    assert sorted(map(tuple, ids.numpy())) == [(i, k) for i in range(3) for k in range(2)]


def test_shard_source_refuses_truncated_or_altered_shards(tmp_path):
    blobs = [encode(random_rgb(1)), encode(random_rgb(2))]
    entries = _write_shard(tmp_path / "s.tar", blobs)
    raw = (tmp_path / "s.tar").read_bytes()
    offset = entries[0]["offset"]
    (tmp_path / "s.tar").write_bytes(raw[:offset + 10] + b"X" + raw[offset + 11:])
    with pytest.raises(DataError, match="img0 in shard .*s.tar does not match its sha256"):
        ShardImageSource(entries, tmp_path).read(0)
    assert ShardImageSource(entries, tmp_path, verify=False).read(0) != blobs[0]
    (tmp_path / "s.tar").write_bytes(raw[:entries[1]["offset"] + 5])
    with pytest.raises(DataError, match="s.tar is truncated: img1 needs"):
        ShardImageSource(entries, tmp_path).read(1)
    with pytest.raises(DataError, match="cannot read img0 from shard"):
        ShardImageSource(entries, tmp_path / "missing").read(0)


# --- the ImageSource contract: every implementation ---------------------------------------------


@pytest.fixture(params=["memory", "shard"])
def make_source(request, tmp_path):
    """Returns a factory of one ImageSource implementation: make_source(blobs, names, corrupt=None).

    `corrupt` is the index of an image to damage as that source can be damaged: bytes that are no
    image in memory, a member whose bytes no longer match the manifest in a shard.
    """

    def make(blobs, names, corrupt=None):
        if request.param == "memory":
            if corrupt is not None:
                blobs = [b"not an image" if i == corrupt else blob for i, blob in enumerate(blobs)]
            return MemoryImageSource(blobs, names)
        path = tmp_path / "shard-contract.tar"
        entries = _write_shard(path, blobs)
        for entry, name in zip(entries, names):
            entry["path"] = name
        if corrupt is not None:
            raw = bytearray(path.read_bytes())
            raw[entries[corrupt]["offset"] + 20] ^= 0xFF
            path.write_bytes(bytes(raw))
        return ShardImageSource(entries, tmp_path)

    return make


def _contract_images():
    pixels = [random_rgb(21), random_rgb(22, 40, 30), random_rgb(23, 33, 47)]
    blobs = [encode(pixels[0], "PNG"), encode(pixels[1], "JPEG"), encode(pixels[2][..., 0], "BMP")]
    return pixels, blobs, ["a.png", "b.jpg", "c.bmp"]


def test_every_source_gives_back_its_images_names_sizes_and_pixels(make_source):
    pixels, blobs, names = _contract_images()
    source = make_source(blobs, names)
    assert len(source) == 3
    assert [source.name(i) for i in range(3)] == names
    assert [source.size(i) for i in range(3)] == [(p.shape[1], p.shape[0]) for p in pixels]
    assert [source.read(i) for i in range(3)] == blobs
    assert source.reads == 3
    np.testing.assert_array_equal(decode_rgb(source.read(0), source.name(0)), pixels[0] / np.float32(255))
    for i in range(3):
        np.testing.assert_array_equal(decode_rgb(source.read(i), source.name(i)), decode_rgb(blobs[i]))


def test_the_pipeline_makes_the_same_patches_from_every_source(make_source):
    _, blobs, names = _contract_images()
    spec = PatchSpec(scale=2, channels=1, patch_size=8, input_kind="low")
    reference = MemoryImageSource(blobs, names)
    expected = next(iter(make_dataset(reference, SampleOrder(3, 2, 6, 1), spec, with_ids=True)))
    got = next(iter(make_dataset(make_source(blobs, names), SampleOrder(3, 2, 6, 1), spec, with_ids=True)))
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_an_index_past_the_end_is_an_index_error(make_source):
    _, blobs, names = _contract_images()
    source = make_source(blobs, names)
    for operation in (source.read, source.name, source.size):
        with pytest.raises(IndexError):
            operation(3)


def test_a_damaged_image_is_a_data_error_naming_it_by_the_time_it_is_read(make_source):
    _, blobs, names = _contract_images()
    with pytest.raises(DataError, match="b.jpg"):
        source = make_source(blobs, names, corrupt=1)
        source.read(0)
        source.read(1)

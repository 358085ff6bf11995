"""Shards: exact size prediction, bounded greedy layout, determinism, tar round trip, manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shardrun.plan.dataset import ImageInfo, scan_dataset
from shardrun.errors import DatasetError
from shardrun.plan.shards import (
    RECORD,
    Manifest,
    digest_shard,
    iter_shard_bytes,
    layout_shards,
    make_shard_spec,
    shard_size,
    write_shard,
)


def fake_images(folder: Path, sizes: list[int], seed: int = 0) -> list[ImageInfo]:
    """Returns ImageInfos for files of random bytes (shards never decode, so any bytes do)."""
    rng = np.random.default_rng(seed)
    images = []
    for n, size in enumerate(sizes):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes() + n.to_bytes(4, "big")
        path = folder / f"img{n:05d}.png"
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        images.append(ImageInfo(path.name, str(path), len(data), sha, 40, 40, 3, "PNG"))
    return images


def check_tar(raw: bytes, spec) -> None:
    """Asserts that stdlib tarfile reads `raw` back to the members' bytes at their offsets."""
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
        infos = archive.getmembers()
        assert [info.name for info in infos] == [member.name for member in spec.members]
        for info, member in zip(infos, spec.members):
            original = Path(member.image.source).read_bytes()
            assert archive.extractfile(info).read() == original
            assert info.offset_data == member.offset
            assert raw[member.offset : member.offset + member.size] == original
            assert (info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname) == (
                0, 0o644, 0, 0, "", "")
            assert info.pax_headers == {}
        assert archive.pax_headers == {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=6000)
                | st.sampled_from([0, 508, 509, 512, 1020, 1024, 10236, 10240]),
                min_size=1, max_size=12))
def test_predicted_size_equals_built_size_exactly(sizes):
    with tempfile.TemporaryDirectory() as tmp:
        images = fake_images(Path(tmp), sizes)
        spec = make_shard_spec(images)
        raw = b"".join(iter_shard_bytes(spec))
        assert len(raw) == spec.size == shard_size(images)
        assert spec.size % RECORD == 0
        check_tar(raw, spec)
        # tarfile itself, given the same members, writes the same number of bytes
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for member in spec.members:
                info = tarfile.TarInfo(member.name)
                info.size = member.size
                archive.addfile(info, io.BytesIO(Path(member.image.source).read_bytes()))
        assert len(buffer.getvalue()) == spec.size


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=60_000), min_size=1, max_size=40),
       st.integers(min_value=RECORD, max_value=120_000))
def test_layout_keeps_order_fills_greedily_and_bounds_sizes(sizes, limit):
    images = [ImageInfo(f"{n}.png", "", size, f"{n:064x}", 40, 40, 3, "PNG")
              for n, size in enumerate(sizes)]
    shards = layout_shards(images, limit)
    assert [m.image for s in shards for m in s.members] == images
    for n, shard in enumerate(shards):
        assert shard.size == shard_size(m.image for m in shard.members)
        assert shard.size <= limit or len(shard.members) == 1
        if n + 1 < len(shards):  # greedy: the next image did not fit
            with_next = [m.image for m in shard.members] + [shards[n + 1].members[0].image]
            assert shard_size(with_next) > limit


def test_an_image_larger_than_the_limit_gets_a_shard_of_its_own(tmp_path):
    images = fake_images(tmp_path, [3000, 50_000, 3000, 3000])
    shards = layout_shards(images, 20_480)
    assert [len(s.members) for s in shards] == [1, 1, 2]
    assert shards[1].size > 20_480 and shards[1].members[0].image == images[1]


def test_layout_refuses_bad_limits_and_repeated_images(tmp_path):
    images = fake_images(tmp_path, [100, 200])
    with pytest.raises(ValueError, match="max_shard_bytes must be an integer of at least 10240"):
        layout_shards(images, 10_000)
    with pytest.raises(ValueError, match="img00000.png twice"):
        layout_shards(images + images[:1], 1_000_000)


def test_shards_are_byte_identical_across_builds_and_ids_follow_content(tmp_path):
    images = fake_images(tmp_path, [700, 1500, 90, 5000])
    first = write_shard(layout_shards(images, 1 << 20)[0], tmp_path / "one.tar")
    again = layout_shards(list(images), 1 << 20)[0]
    second = write_shard(again, tmp_path / "two.tar")
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    assert (first.id, first.size, first.md5, first.sha256) == (
        second.id, second.size, second.md5, second.sha256)
    assert hashlib.md5((tmp_path / "one.tar").read_bytes()).hexdigest() == first.md5
    assert tuple(digest_shard(again)) == (first.size, first.md5, first.sha256)
    assert re.fullmatch(r"shard-[0-9a-f]{16}", first.id)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    reordered = make_shard_spec(images[::-1])
    (tmp_path / "other").mkdir()
    changed = make_shard_spec(images[:3] + fake_images(tmp_path / "other", [5000], seed=9))
    assert len({first.id, reordered.id, changed.id}) == 3
    assert make_shard_spec(images[:3]).id == layout_shards(images, 10240)[0].id  # 3 fit in 10240


def test_a_source_changed_or_deleted_since_the_scan_fails_the_build(tmp_path):
    images = fake_images(tmp_path, [1000, 1000])
    spec = make_shard_spec(images)
    Path(images[1].source).write_bytes(b"x" * images[1].size)  # same size, other bytes
    with pytest.raises(DatasetError, match=r"^img00001.png changed since the dataset was scanned"):
        write_shard(spec, tmp_path / "s.tar")
    assert not (tmp_path / "s.tar").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    os.remove(images[0].source)
    with pytest.raises(DatasetError, match="^img00000.png vanished since the dataset was scanned"):
        digest_shard(spec)


def write_png(path: Path, seed: int, size=(48, 40)) -> None:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_scan_to_shards_to_manifest_and_back(tmp_path):
    data = tmp_path / "imgs"
    for n in range(12):
        write_png(data / f"{n % 2}/p{n}.png", n, size=(40 + n, 36))
    Image.open(data / "0/p0.png").convert("L").save(data / "gray.jpg", "JPEG")
    scan = scan_dataset("imgs", tmp_path, min_side=32, workers=1)
    specs = layout_shards(scan.accepted, 30_000)
    built = [write_shard(spec, tmp_path / f"{spec.id}.tar") for spec in specs]
    manifest = Manifest.build(scan.fingerprint, built)

    raw = manifest.to_json_bytes()
    assert Manifest.from_json_bytes(raw) == manifest
    assert Manifest.from_json_bytes(raw).to_json_bytes() == raw
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    document = json.loads(raw)
    assert document["fingerprint"] == scan.fingerprint
    assert set(document["shards"][0]) == {"id", "size", "md5", "sha256", "images"}
    assert set(document["shards"][0]["images"][0]) == {
        "path", "shard", "offset", "size", "sha256", "width", "height", "channels", "format"}

    assert sorted(i.path for i in manifest.images) == [i.path for i in scan.accepted]
    by_path = {image.path: image for image in scan.accepted}
    for image in manifest.images:  # what the training pipeline does: read size bytes at offset
        with open(tmp_path / f"{image.shard}.tar", "rb") as handle:
            handle.seek(image.offset)
            content = handle.read(image.size)
        assert hashlib.sha256(content).hexdigest() == image.sha256 == by_path[image.path].sha256
        assert Image.open(io.BytesIO(content)).size == (image.width, image.height)
    gray = next(i for i in manifest.images if i.path == "gray.jpg")
    assert (gray.channels, gray.format) == (1, "JPEG")
    assert manifest.total_bytes == sum(os.path.getsize(tmp_path / f"{s.id}.tar") for s in specs)
    for shard, spec in zip(manifest.shards, specs):
        body = (tmp_path / f"{shard.id}.tar").read_bytes()
        assert shard.md5 == hashlib.md5(body).hexdigest() and shard.size == len(body)
        check_tar(body, spec)


@pytest.mark.parametrize("raw, message", [
    (b"\xff", "shard manifest is not valid JSON"),
    (b"[]", "shard manifest is not valid: expected a JSON object"),
    (b'{"version": 9, "fingerprint": "f", "shards": []}', "shard manifest has version 9"),
    (b'{"version": 1, "shards": []}', "needs 'fingerprint' and 'shards'"),
    (b'{"version": 1, "fingerprint": "f", "shards": [{"id": "s", "size": "1", "md5": "m", '
     b'"sha256": "h", "images": []}]}', r"shards\[0\].size should be int, got '1'"),
    (b'{"version": 1, "fingerprint": "f", "shards": [{"id": "s", "size": 1, "md5": "m", '
     b'"sha256": "h", "images": [{"path": "a"}]}]}', r"shards\[0\].images\[0\].shard should be str"),
])
def test_a_malformed_manifest_raises_a_one_line_dataset_error(raw, message):
    with pytest.raises(DatasetError, match=message) as caught:
        Manifest.from_json_bytes(raw)
    assert "\n" not in str(caught.value)

"""scan_dataset: content identification, every rejection reason, walking, globbing, the pool."""

from __future__ import annotations

import io
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from shardrun.plan import dataset
from shardrun.plan.dataset import (
    ImageInfo,
    ScanResult,
    dataset_fingerprint,
    diff_datasets,
    display_path,
    scan_dataset,
)
from shardrun.errors import DatasetError

MIN = 32
RNG = np.random.default_rng(7)


def encode(fmt: str, mode: str = "RGB", size=(48, 40), **options) -> bytes:
    """Returns the bytes of a noisy image in `fmt` (noise makes every image distinct)."""
    width, height = size
    if mode == "I;16":
        array = RNG.integers(0, 65535, (height, width), dtype=np.uint16)
        image = Image.fromarray(array)
    else:
        image = Image.fromarray(RNG.integers(0, 255, (height, width, 3), dtype=np.uint8))
        image = image.convert(mode) if mode != "RGB" else image
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def put(folder: Path, name: str | bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(folder), os.fsencode(name))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def scan(data, base: Path, **options) -> ScanResult:
    options.setdefault("workers", 1)
    options.setdefault("min_side", MIN)
    return scan_dataset(data, base, **options)


def rejected_by_path(result: ScanResult) -> dict[str, tuple[str, str]]:
    return {item.path: (item.kind, item.reason) for item in result.rejected}


def test_every_kind_of_file_is_accepted_or_rejected_with_its_reason(tmp_path):
    root = tmp_path / "imgs"
    good = encode("PNG")
    put(root, "a.png", good)
    put(root, "sub/deep/b.jpg", encode("JPEG"))
    put(root, "c.bmp", encode("BMP"))
    put(root, "png_named.jpg", encode("PNG"))
    put(root, "gray16.png", encode("PNG", "I;16"))
    put(root, "palette.png", encode("PNG", "P"))
    put(root, "rgba.png", encode("PNG", "RGBA"))
    put(root, "gray_alpha.png", encode("PNG", "LA"))
    put(root, "gray.jpg", encode("JPEG", "L"))
    put(root, "palette.bmp", encode("BMP", "P"))
    put(root, "z_copy.png", good)
    put(root, "empty.png", b"")
    put(root, "text.png", b"just some text, not an image\n")
    put(root, "noise.jpg", bytes(RNG.integers(0, 255, 3000, dtype=np.uint8)))
    png = encode("PNG")
    put(root, "truncated.png", png[: len(png) // 2])
    put(root, "no_end.png", png[:-12])
    jpeg = encode("JPEG")
    put(root, "truncated.jpg", jpeg[: len(jpeg) // 2])
    flipped = bytearray(encode("PNG"))
    flipped[len(flipped) // 2] ^= 0xFF
    put(root, "corrupt.png", bytes(flipped))
    put(root, "header_only.png", png[:30])
    put(root, "photo.tif", encode("TIFF"))
    put(root, "anim.gif", encode("GIF"))
    put(root, "small.png", encode("PNG", size=(20, 18)))
    put(root, "narrow.png", encode("PNG", size=(100, 31)))
    put(root, ".hidden.png", encode("PNG"))
    put(root, ".cache/x.png", encode("PNG"))

    result = scan("imgs", tmp_path)

    info = {image.path: image for image in result.accepted}
    assert sorted(info) == [
        "a.png", "c.bmp", "gray.jpg", "gray16.png", "gray_alpha.png", "palette.bmp",
        "palette.png", "png_named.jpg", "rgba.png", "sub/deep/b.jpg",
    ]
    assert info["png_named.jpg"].format == "PNG"  # content wins over the extension
    assert (info["gray16.png"].channels, info["gray16.png"].mode) == (1, "I;16")
    assert [info[p].channels for p in ("gray.jpg", "gray_alpha.png")] == [1, 1]
    assert [info[p].channels for p in ("palette.png", "rgba.png", "c.bmp", "palette.bmp")] == [3] * 4
    assert (info["a.png"].width, info["a.png"].height, info["a.png"].size) == (48, 40, len(good))
    assert info["sub/deep/b.jpg"].source == str(root / "sub" / "deep" / "b.jpg")

    reasons = rejected_by_path(result)
    supported = "(supported: PNG, JPEG, BMP)"
    assert reasons == {
        "z_copy.png": ("duplicate", "duplicate of a.png"),
        "empty.png": ("empty", "empty file (0 bytes)"),
        "text.png": ("not-an-image", "not an image (Pillow cannot identify it)"),
        "noise.jpg": ("not-an-image", "not an image (Pillow cannot identify it)"),
        "truncated.png": ("truncated", "truncated PNG: image file is truncated"),
        "no_end.png": ("truncated", "truncated PNG: the IEND chunk is missing"),
        "truncated.jpg": reasons["truncated.jpg"],
        "corrupt.png": ("corrupt", "corrupt PNG: broken data stream when reading image file"),
        "header_only.png": ("corrupt", "corrupt PNG: Pillow cannot read its header"),
        "photo.tif": ("unsupported-format", f"unsupported format TIFF {supported}"),
        "anim.gif": ("unsupported-format", f"unsupported format GIF {supported}"),
        "small.png": ("too-small", "too small: 20x18 px, training patches need at least 32x32"),
        "narrow.png": ("too-small", "too small: 100x31 px, training patches need at least 32x32"),
    }
    kind, reason = reasons["truncated.jpg"]
    assert kind == "truncated" and reason.startswith("truncated JPEG: image file is truncated")
    assert [item.path for item in result.rejected] == sorted(reasons)
    assert result.reasons["too-small"] == 2 and result.reasons["truncated"] == 3
    assert result.total_bytes == sum(image.size for image in result.accepted)
    assert result.summary().startswith("10 images (")
    assert "13 rejected (3 truncated, 2 corrupt, 2 not-an-image" in result.summary()


def test_truncated_files_stay_rejected_even_if_the_caller_loads_truncated_images(tmp_path, monkeypatch):
    png = encode("PNG")
    put(tmp_path, "ok.png", encode("PNG"))
    put(tmp_path, "cut.png", png[: len(png) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)

    result = scan(".", tmp_path)

    assert rejected_by_path(result) == {"cut.png": ("truncated", "truncated PNG: image file is truncated")}
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_pillow_limit_warning_and_error_paths(tmp_path):
    put(tmp_path, "big.png", encode("PNG", size=(40, 40)))  # 1600 px
    put(tmp_path, "ok.png", encode("PNG", size=(20, 20)))  # 400 px
    warned = scan(".", tmp_path, max_pixels=1000, min_side=8)  # 1000 < 1600 <= 2000: a warning
    failed = scan(".", tmp_path, max_pixels=700, min_side=8)  # 1600 > 1400: an error
    for result in (warned, failed):
        assert [image.path for image in result.accepted] == ["ok.png"]
        kind, reason = rejected_by_path(result)["big.png"]
        assert kind == "decompression-bomb"
        assert reason.startswith("decompression bomb: Image size (1600 pixels) exceeds limit")
    assert Image.MAX_IMAGE_PIXELS == 89478485  # the caller's limit is restored


def test_non_utf8_names_get_printable_escaped_paths_and_stay_readable(tmp_path):
    put(tmp_path, b"caf\xe9/\xff\xfe.png", encode("PNG"))
    put(tmp_path, "plain.png", encode("PNG"))

    result = scan(".", tmp_path)

    weird = next(image for image in result.accepted if image.path != "plain.png")
    assert weird.path == "caf\\xe9/\\xff\\xfe.png"
    assert os.fsencode(weird.source).endswith(b"caf\xe9/\xff\xfe.png")
    with open(weird.source, "rb") as handle:
        assert len(handle.read()) == weird.size
    json.dumps([image.path for image in result.accepted])  # JSON-able
    sqlite3.connect(":memory:").execute("select ?", (weird.path,)).fetchone()  # storable
    assert display_path(os.fsdecode(b"a/\xff.png")) == "a/\\xff.png"


def test_a_name_that_prints_like_an_escaped_one_is_rejected_not_merged(tmp_path):
    put(tmp_path, b"\xff.png", encode("PNG"))
    put(tmp_path, b"\\xff.png", encode("PNG"))  # a real backslash, then 'xff'
    result = scan(".", tmp_path)
    assert [image.path for image in result.accepted] == ["\\xff.png"]
    assert [(r.path, r.kind) for r in result.rejected] == [("\\xff.png", "ambiguous-name")]


def test_symlink_loops_broken_links_and_repeated_folders(tmp_path):
    root = tmp_path / "data"
    put(root, "real/a.png", encode("PNG"))
    put(tmp_path / "outside", "o.png", encode("PNG"))
    os.symlink("..", root / "real" / "up")  # loop back to the root
    os.symlink("real", root / "a_link")  # same folder, found first in sorted order
    os.symlink(tmp_path / "outside", root / "ext")  # folder outside the tree: followed
    os.symlink("missing.png", root / "broken.png")
    os.symlink("l2.png", root / "l1.png")
    os.symlink("l1.png", root / "l2.png")
    os.symlink("real/a.png", root / "file_link.png")  # same bytes: a duplicate

    result = scan("data", tmp_path)

    assert [image.path for image in result.accepted] == ["ext/o.png", "file_link.png"]
    assert rejected_by_path(result) == {
        "a_link": ("repeated-folder", "same folder as real (already scanned)"),
        "real/up": ("symlink-loop", "symlink loop back to ."),
        "broken.png": ("broken-symlink", "broken symlink (its target does not exist)"),
        "l1.png": ("symlink-loop", "symlink loop (too many levels of symbolic links)"),
        "l2.png": ("symlink-loop", "symlink loop (too many levels of symbolic links)"),
        "real/a.png": ("duplicate", "duplicate of file_link.png"),
    }


def test_unreadable_files_and_folders_are_rejected(tmp_path, monkeypatch):
    put(tmp_path, "ok.png", encode("PNG"))
    put(tmp_path, "secret.png", encode("PNG"))
    put(tmp_path, "locked/x.png", encode("PNG"))
    os.chmod(tmp_path / "secret.png", 0)
    os.chmod(tmp_path / "locked", 0)
    if os.geteuid() == 0:  # root reads anything: make the permission errors happen anyway
        real_open, real_scandir = open, os.scandir

        def fake_open(path, *args, **kwargs):
            if os.fspath(path).endswith("secret.png"):
                raise PermissionError(13, "Permission denied", path)
            return real_open(path, *args, **kwargs)

        def fake_scandir(path="."):
            if os.fspath(path).endswith("locked"):
                raise PermissionError(13, "Permission denied", path)
            return real_scandir(path)

        monkeypatch.setattr(dataset, "open", fake_open, raising=False)
        monkeypatch.setattr(os, "scandir", fake_scandir)
    try:
        result = scan(".", tmp_path)
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    assert [image.path for image in result.accepted] == ["ok.png"]
    assert rejected_by_path(result) == {
        "secret.png": ("unreadable", "unreadable: permission denied"),
        "locked": ("unreadable", "unreadable folder: permission denied"),
    }


def test_a_file_deleted_during_the_scan_is_reported_as_vanished(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        put(tmp_path, name, encode("PNG"))
    calls = []

    def on_progress(done, total):
        calls.append((done, total))
        if done == 0:
            os.remove(tmp_path / "b.png")

    result = scan(".", tmp_path, on_progress=on_progress)

    assert rejected_by_path(result) == {"b.png": ("vanished", "vanished during scan")}
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)


def test_glob_patterns_select_files_relative_to_the_base_dir(tmp_path):
    put(tmp_path, "imgs/a.png", encode("PNG"))
    put(tmp_path, "imgs/b.jpg", encode("JPEG"))
    put(tmp_path, "imgs/x/c.png", encode("PNG"))
    put(tmp_path, "imgs/x/y/d.png", encode("PNG"))
    put(tmp_path, "imgs/x/y/e.txt", b"not matched, so not listed")
    put(tmp_path, "imgs/.hid/f.png", encode("PNG"))

    def paths(data):
        return [image.path for image in scan(data, tmp_path).accepted]

    assert paths("imgs/*.png") == ["a.png"]
    assert paths("imgs/**/*.png") == ["a.png", "x/c.png", "x/y/d.png"]
    assert paths("imgs/*/**/*.png") == ["x/c.png", "x/y/d.png"]
    assert paths("imgs/x/*/d.[pj]ng") == ["y/d.png"]
    assert paths(str(tmp_path / "imgs" / "**")) == ["a.png", "b.jpg", "x/c.png", "x/y/d.png"]
    assert scan("imgs/**", tmp_path).rejected[0].path == "x/y/e.txt"
    with pytest.raises(DatasetError, match=r"^no file matches dataset pattern 'imgs/\*\.gif' "):
        scan("imgs/*.gif", tmp_path)
    with pytest.raises(DatasetError, match="no file matches dataset pattern 'nope/\\*.png'"):
        scan("nope/*.png", tmp_path)


def test_unusable_datasets_raise_one_line_errors_naming_the_data(tmp_path):
    with pytest.raises(DatasetError, match=r"^dataset folder 'missing' does not exist \(resolved to "):
        scan("missing", tmp_path)
    put(tmp_path, "file.png", encode("PNG"))
    with pytest.raises(DatasetError, match="dataset folder 'file.png' is not a folder"):
        scan("file.png", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="^no file found in dataset folder 'empty'"):
        scan("empty", tmp_path)
    put(tmp_path, "bad/a.png", encode("PNG", size=(10, 10)))
    put(tmp_path, "bad/b.png", encode("PNG", size=(12, 10)))
    put(tmp_path, "bad/c.txt", b"hello")
    with pytest.raises(DatasetError) as caught:
        scan("bad", tmp_path)
    message = str(caught.value)
    assert message == "no usable image in dataset folder 'bad': 3 rejected (2 too-small, 1 not-an-image)"
    with pytest.raises(ValueError, match="min_side"):
        scan_dataset("bad", tmp_path, min_side=0)


def test_fingerprint_identifies_the_accepted_set(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    a, b = encode("PNG"), encode("JPEG")
    for root in (first, second):
        put(root, "a.png", a)
        put(root, "b/c.jpg", b)
    put(second, "junk.txt", b"rejected files do not count")
    one, two = scan(first, tmp_path), scan(second, tmp_path)
    assert one.fingerprint == two.fingerprint == dataset_fingerprint(reversed(one.accepted))
    put(second, "a.png", encode("PNG"))
    assert scan(second, tmp_path).fingerprint != one.fingerprint
    os.rename(first / "a.png", first / "renamed.png")
    assert scan(first, tmp_path).fingerprint != one.fingerprint


def test_the_process_pool_gives_the_same_result_as_in_process(tmp_path, monkeypatch):
    for n in range(40):
        put(tmp_path, f"d{n % 3}/img{n:02d}.png", encode("PNG", size=(32 + n % 5, 40)))
    put(tmp_path, "d0/bad.png", b"broken")
    put(tmp_path, "d1/copy.png", (tmp_path / "d0" / "img00.png").read_bytes())
    calls = []
    monkeypatch.setattr(dataset, "_POOL_MIN_FILES", 0)

    pooled = scan_dataset(".", tmp_path, min_side=MIN, workers=2,
                          on_progress=lambda d, t: calls.append((d, t)))
    local = scan(".", tmp_path)

    assert pooled == local
    assert len(pooled.accepted) == 40 and len(pooled.rejected) == 2
    assert calls[0] == (0, 42) and calls[-1] == (42, 42)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) > 2


def test_diff_datasets_reports_added_removed_and_modified_paths(tmp_path):
    def info(path, sha):
        return ImageInfo(path, path, 1, sha, 40, 40, 3, "PNG")

    old = [info("a/b.png", "1"), info("c.png", "2"), info("gone.png", "3")]
    new = ScanResult([info("a/b.png", "9"), info("c.png", "2"), info("new1.png", "4"),
                      info("new2.png", "5")], [], "f")
    change = diff_datasets(old, new)
    assert (change.added, change.removed, change.modified) == (["new1.png", "new2.png"],
                                                             ["gone.png"], ["a/b.png"])
    assert change.summary() == "2 added, 1 removed, 1 modified (e.g. a/b.png)"
    same = diff_datasets(old, old)
    assert not same and same.summary() == "no change"
    assert diff_datasets([], old[:1]).summary() == "1 added, 0 removed, 0 modified (e.g. a/b.png)"

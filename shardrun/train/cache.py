"""Decoded images, each decoded once per session into a local folder of `.npy` files and read
back memory-mapped, so that an epoch costs no decoding at all.

Pixels. An image is stored as the integers its decoder gives: uint8 RGB for 8-bit images, uint16
for 16-bit PNGs (and Pillow's 16-bit grayscale modes), exactly the values that data.py's
`decode_tf` / `decode_rgb` divide by 255 or 65535. A dataset that mixes both is read as uint16
with the 8-bit images multiplied by 257: v·257/65535 is the same real number as v/255, so the
float32 division gives the same float, bit for bit.

Files. `<sha256 of the encoded bytes>-<dtype>.npy` (content-addressed, so two runs or two
workers of a machine share an entry), written to a temporary name and renamed into place, with
the file's own sha256 beside it in `<name>.sha256`. An entry is verified against that hash the
first time this process opens it; one that does not match is decoded again. The folder is bounded
by `cap_bytes`: the least recently written entries this object does not hold are removed to make
room, and an image that still does not fit is kept in memory instead, in a small
least-recently-used set (so memory stays bounded too).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from shardrun.train.checkpoint import file_sha256
from shardrun.train.data import DataError, ImageSource

# What the local cache of decoded images may hold on disk by default.
DEFAULT_CAP_BYTES = 8 * 2**30

# Images kept in memory when they do not fit under the cap (about two windows' worth).
MEMORY_SLOTS = 32

_PNG, _JPEG = b"\x89PNG", b"\xff\xd8"


def stored_dtype(data: bytes, name: str = "image") -> np.dtype:
    """Returns the integer type an encoded image decodes to (uint8, or uint16 for 16-bit),
    reading its header only."""
    if data[:4] == _PNG:
        return np.dtype(np.uint16 if data[24:25] == b"\x10" else np.uint8)
    if data[:2] == _JPEG:
        return np.dtype(np.uint8)
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{name} is not a readable image: {error}") from error
    if mode == "F":
        raise DataError(f"{name} holds floating-point pixels, which the image cache cannot keep")
    return np.dtype(np.uint16 if mode.startswith("I") else np.uint8)


def decode_pixels(data: bytes, name: str = "image") -> np.ndarray:
    """Returns the image's RGB integers (H, W, 3), uint8 or uint16, decoded by the same decoders
    as data.py's pipeline (TensorFlow for PNG and JPEG, Pillow for the rest)."""
    import tensorflow as tf

    try:
        if data[:4] == _PNG:
            dtype = tf.uint16 if data[24:25] == b"\x10" else tf.uint8
            return tf.io.decode_png(data, 3, dtype=dtype).numpy()
        if data[:2] == _JPEG:
            return tf.io.decode_jpeg(data, 3, dct_method="INTEGER_ACCURATE").numpy()
    except tf.errors.OpError as error:
        raise DataError(f"{name} is not a readable image: {error.message}") from error
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode.startswith("I"):
                gray = np.clip(np.asarray(image, dtype=np.int64), 0, 65535).astype(np.uint16)
                return np.repeat(gray[..., None], 3, axis=2)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{name} is not a readable image: {error}") from error


class DecodedImages:
    """The decoded pixels of a source's images, from a bounded local cache (see the module
    docstring). `folder=None` keeps them in memory (tests, benchmarks)."""

    def __init__(self, source: ImageSource, folder: Path | str | None = None,
                 cap_bytes: int = DEFAULT_CAP_BYTES, threads: int = 2):
        self.source = source
        self.folder = Path(folder) if folder is not None else None
        self.cap_bytes = cap_bytes
        self.threads = max(1, threads)
        self.decodes = 0  # images decoded by this object: tests count work with it
        self._keys: dict[int, str] = {}
        self._dtypes: dict[int, np.dtype] = {}
        self._held: dict[int, np.ndarray] = {}  # memory-mapped (or, without a folder, in memory)
        self._spill: OrderedDict[int, np.ndarray] = OrderedDict()  # over the cap: in memory
        self._dtype: np.dtype | None = None

    @property
    def dtype(self) -> np.dtype:
        """Returns the type every image is given in: uint16 if any image is 16-bit, else uint8."""
        if self._dtype is None:
            for i in range(len(self.source)):
                self._identify(i)
            wide = any(d == np.uint16 for d in self._dtypes.values())
            self._dtype = np.dtype(np.uint16 if wide else np.uint8)
        return self._dtype

    @property
    def divisor(self) -> float:
        """Returns what the stored integers are divided by to give pixels in [0, 1]."""
        return 65535.0 if self.dtype == np.uint16 else 255.0

    def _identify(self, index: int) -> bytes | None:
        if index in self._keys:
            return None
        data = self.source.read(index)
        self._keys[index] = hashlib.sha256(data).hexdigest()
        self._dtypes[index] = stored_dtype(data, self.source.name(index))
        return data

    def pixels(self, index: int) -> np.ndarray:
        """Returns image `index` as (H, W, 3) integers of `dtype` (read-only)."""
        if index in self._held:
            return self._held[index]
        if index in self._spill:
            self._spill.move_to_end(index)
            return self._spill[index]
        return self._load(index)

    def ensure(self, indices) -> None:
        """Decodes the images among `indices` not yet at hand, on `threads` threads."""
        missing = sorted({int(i) for i in indices} - set(self._held) - set(self._spill))
        if len(missing) > 1 and self.threads > 1:
            self.dtype  # noqa: B018 — identified once, before the threads start
            with ThreadPoolExecutor(self.threads) as pool:
                arrays = list(pool.map(self._decode, missing))
            for index, array in zip(missing, arrays):
                self._keep(index, array)
        else:
            for index in missing:
                self.pixels(index)

    def _decode(self, index: int, data: bytes | None = None) -> np.ndarray:
        # Returns the stored file's mapping if a verified entry exists, else the decoded array.
        self.dtype  # noqa: B018
        path = self._path(index)
        if path is not None and self._verified(path):
            return np.load(path, mmap_mode="r")
        data = data if data is not None else self.source.read(index)
        array = decode_pixels(data, self.source.name(index))
        self.decodes += 1
        if array.dtype != self.dtype:
            array = array.astype(self.dtype) * np.uint16(257)
        return array

    def _load(self, index: int) -> np.ndarray:
        return self._keep(index, self._decode(index))

    def _keep(self, index: int, array: np.ndarray) -> np.ndarray:
        if isinstance(array, np.memmap) or self.folder is None:
            array.flags.writeable = False
            self._held[index] = array
            return array
        path = self._path(index)
        if self._make_room(array.nbytes + 128):
            self._write(path, array)
            mapped = np.load(path, mmap_mode="r")
            self._held[index] = mapped
            return mapped
        array.flags.writeable = False
        self._spill[index] = array
        while len(self._spill) > MEMORY_SLOTS:
            self._spill.popitem(last=False)
        return array

    def _path(self, index: int) -> Path | None:
        if self.folder is None:
            return None
        self._identify(index)
        return self.folder / f"{self._keys[index]}-{self.dtype.name}.npy"

    def _verified(self, path: Path) -> bool:
        sidecar = path.with_name(path.name + ".sha256")
        try:
            expected = sidecar.read_text("ascii").strip()
            return path.exists() and file_sha256(path) == expected
        except OSError:
            return False

    def _write(self, path: Path, array: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{id(array)}")
        try:
            with open(temp, "wb") as handle:
                np.save(handle, np.ascontiguousarray(array))
            digest = file_sha256(temp)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        sidecar = path.with_name(path.name + ".sha256")
        temp_sidecar = sidecar.with_name(f".{sidecar.name}.tmp-{os.getpid()}")
        temp_sidecar.write_text(digest + "\n", "ascii")
        os.replace(temp_sidecar, sidecar)

    def _make_room(self, needed: int) -> bool:
        """Returns whether `needed` more bytes fit under the cap, after removing the oldest
        entries that this object does not hold."""
        entries = sorted(self.folder.glob("*.npy"), key=lambda p: p.stat().st_mtime) \
            if self.folder.exists() else []
        used = sum(p.stat().st_size for p in entries)
        held = {self._path(i) for i in self._held}
        for path in entries:
            if used + needed <= self.cap_bytes:
                break
            if path in held:
                continue
            used -= path.stat().st_size
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        return used + needed <= self.cap_bytes

"""The store contract, documented once; every backend supplies only what differs.

A store holds objects under relative keys (`a/b/c`) for one account. Backends implement five
primitives (`_write`, `_read`, `_stat`, `_list`, `_delete`, plus `usage`); everything else
(key validation, hashing, verification, resumable downloads, `exists`, ...) is written here.
Backends with real folders (local, Drive, fsspec) also override `_list_folder`, one folder's
listing, so that reading a few folders of a large tree costs those folders only.

Guarantees every backend gives (and tests/storage/test_contract.py checks):
- `put` is atomic: a reader sees the old object or the new one, never a torn one.
- `put` returns a `Stat` whose `mtime` is the store's own time of the write (server time).
- A write that would exceed the account's quota raises `QuotaExceeded` and leaves nothing behind.
- Keys with `..`, `.`, empty parts, backslashes or a leading `/` are refused with `InvalidKey`.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from shardrun.errors import IntegrityError, InvalidKey, NotFound, QuotaExceeded
from shardrun.paths import validate_key, validate_prefix

COPY_BUFFER = 1024 * 1024

Progress = Callable[[int, int], None]  # (bytes done, bytes in all), for long transfers


@dataclass(frozen=True)
class Stat:
    """What a store knows about one object.

    `mtime` is the store's (server's) time of the write in seconds since the epoch; it orders
    journal events and judges leases, so it must never come from the writer's clock.
    `md5` is always set by `put` and `stat`; `list` may leave it None where a backend cannot
    give it cheaply (the local store computes hashes only on demand).
    """

    key: str
    size: int
    mtime: float
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Folder:
    """One folder's listing (Store.list_folder): the objects directly in it, sorted by key, and the
    names of its sub-folders, sorted."""

    objects: list[Stat]
    folders: list[str]


@dataclass(frozen=True)
class Usage:
    """Bytes an account uses and its limit (None: unlimited)."""

    used_bytes: int
    limit_bytes: int | None

    @property
    def free_bytes(self) -> int | None:
        return None if self.limit_bytes is None else max(0, self.limit_bytes - self.used_bytes)


@dataclass(frozen=True)
class Digest:
    size: int
    md5: str
    sha256: str


def digest_file(path: str | os.PathLike) -> Digest:
    """Returns the size, md5 and sha256 of a local file, read once."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(COPY_BUFFER):
            md5.update(block)
            sha.update(block)
            size += len(block)
    return Digest(size, md5.hexdigest(), sha.hexdigest())


def digest_bytes(data: bytes) -> Digest:
    return Digest(len(data), hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest())


class Store(ABC):
    """One account's objects. Subclasses implement the underscore primitives and `usage`."""

    #: The URL this store was opened from (for messages; never holds credentials).
    url: str
    #: Seconds between two times the store can tell apart (S3's LastModified: 1.0); 0 where finer
    #: than anything shardrun measures. Writes within one tick share a time, and the journal
    #: orders them by event id (DESIGN §5).
    time_resolution: float = 0.0
    #: True where one key may be held by two objects (Drive allows two files of one name): a
    #: reader then lists with stats to see which copy is the key's (see DriveStore).
    duplicate_copies: bool = False

    # -- primitives -------------------------------------------------------------------------

    @abstractmethod
    def _write(self, key: str, source: BinaryIO, digest: Digest) -> Stat:
        """Atomically stores `digest.size` bytes read from `source` under `key`."""

    @abstractmethod
    def _read(self, key: str, offset: int = 0) -> BinaryIO:
        """Returns a binary stream of the object from `offset`; raises NotFound."""

    @abstractmethod
    def _stat(self, key: str) -> Stat:
        """Returns the object's Stat with md5; raises NotFound."""

    @abstractmethod
    def _list(self, prefix: str) -> list[Stat]:
        """Returns the Stats of all objects whose key starts with `prefix`."""

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Removes the object; raises NotFound."""

    @abstractmethod
    def usage(self) -> Usage:
        """Returns the account's bytes used and its limit."""

    # -- the contract, written once ---------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> Stat:
        """Stores `data` under `key` atomically; returns the new object's Stat."""
        import io

        validate_key(key)
        return self._write(key, io.BytesIO(data), digest_bytes(data))

    def put_file(self, key: str, path: str | os.PathLike, progress: Progress | None = None) -> Stat:
        """Uploads a local file atomically and verifies the stored md5; returns its Stat.

        `progress(done, total)` is called as the backend reads the file (for progress bars).
        """
        validate_key(key)
        digest = digest_file(path)
        with open(path, "rb") as source:
            stream = _ProgressReader(source, digest.size, progress) if progress else source
            stat = self._write(key, stream, digest)
        if stat.md5 is not None and stat.md5 != digest.md5:
            raise IntegrityError(
                f"{self.url}: {key} was stored with md5 {stat.md5}, but {path} has {digest.md5}"
            )
        return stat

    def get_bytes(self, key: str, expected_md5: str | None = None) -> bytes:
        """Returns the object's bytes, checked against `expected_md5` when given."""
        validate_key(key)
        with self._read(key) as stream:
            data = stream.read()
        if expected_md5 is not None:
            actual = hashlib.md5(data).hexdigest()
            if actual != expected_md5:
                raise IntegrityError(
                    f"{self.url}: {key} has md5 {actual}, expected {expected_md5}"
                )
        return data

    def get_with_stat(self, key: str) -> tuple[bytes, Stat]:
        """Returns the object's bytes and its Stat, read together where the backend can."""
        validate_key(key)
        return self.get_bytes(key), self._stat(key)

    def download(self, key: str, dest: str | os.PathLike, expected_md5: str | None = None,
                 progress: Progress | None = None) -> Stat:
        """Copies the object to a local file, resuming a partial `dest.part`; returns its Stat.

        The file appears at `dest` only once complete and, when `expected_md5` (or else the
        store's own md5) is known, verified. A mismatch removes the partial file and raises
        IntegrityError, so the next attempt starts clean. `progress(done, total)` follows the copy.
        """
        validate_key(key)
        stat = self._stat(key)
        want = expected_md5 or stat.md5
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        offset = part.stat().st_size if part.exists() else 0
        if offset > stat.size:
            part.unlink()
            offset = 0
        if offset < stat.size:
            with self._read(key, offset) as stream, open(part, "ab") as out:
                while block := stream.read(COPY_BUFFER):
                    out.write(block)
                    offset += len(block)
                    if progress:
                        progress(offset, stat.size)
        if want is not None:
            got = digest_file(part).md5
            if got != want:
                part.unlink()
                raise IntegrityError(f"{self.url}: {key} downloaded with md5 {got}, expected {want}")
        os.replace(part, dest)
        return stat

    def stat(self, key: str) -> Stat:
        """Returns the object's Stat (md5 included); raises NotFound."""
        return self._stat(validate_key(key))

    def list(self, prefix: str = "") -> list[Stat]:
        """Returns the Stats of objects under `prefix`, sorted by key."""
        return sorted(self._list(validate_prefix(prefix)), key=lambda s: s.key)

    def list_folder(self, prefix: str = "") -> Folder:
        """Returns the objects directly under the folder `prefix` ('' or a key ending in '/') and
        the names of its sub-folders (those holding objects; a backend with real folders may also
        name an empty one). On a backend with folders it lists that folder alone, whatever lies
        deeper: on Drive one files.list per 1,000 children."""
        validate_prefix(prefix)
        if prefix and not prefix.endswith("/"):
            raise InvalidKey(f"list_folder takes a folder ('' or a key ending in '/'), got {prefix!r}")
        found = self._list_folder(prefix)
        return Folder(sorted(found.objects, key=lambda s: s.key), sorted(set(found.folders)))

    def _list_folder(self, prefix: str) -> Folder:
        """One folder's listing; this default reads the whole tree under `prefix` (right, not cheap)."""
        objects, folders = [], set()
        for stat in self._list(prefix):
            rest = stat.key[len(prefix):]
            if "/" in rest:
                folders.add(rest.split("/", 1)[0])
            else:
                objects.append(stat)
        return Folder(objects, sorted(folders))

    def list_keys(self, prefix: str = "") -> list[str]:
        """Returns the keys under `prefix`, sorted; backends override it where names are cheaper than Stats."""
        return [stat.key for stat in self.list(prefix)]

    def delete(self, key: str) -> None:
        """Removes the object under `key`; raises NotFound if there is none."""
        self._delete(validate_key(key))

    def identity(self) -> str | None:
        """Returns who the store acts as (Drive: the account's email); None where the backend has
        no notion of it (local folders, memory), so anyone who can reach the URL is the account."""
        return None

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def check_room(self, key: str, size: int, replaced: int = 0) -> None:
        """Raises QuotaExceeded if writing `size` bytes (replacing `replaced`) would not fit."""
        usage = self.usage()
        if usage.limit_bytes is None:
            return
        after = usage.used_bytes - replaced + size
        if after > usage.limit_bytes:
            raise QuotaExceeded(
                f"{self.url}: no room for {key} ({size:,} bytes): "
                f"{usage.used_bytes:,} of {usage.limit_bytes:,} bytes used"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class _ProgressReader:
    """A file wrapper that reports how far into the file reads have got (seeks back, as a
    resumed upload does, are not reported as progress lost)."""

    def __init__(self, inner: BinaryIO, total: int, progress: Progress):
        self.inner = inner
        self.total = total
        self.progress = progress
        self.reached = 0

    def read(self, size: int = -1) -> bytes:
        block = self.inner.read(size)
        position = self.inner.tell()
        if position > self.reached:
            self.reached = position
            self.progress(position, self.total)
        return block

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def __getattr__(self, name):
        return getattr(self.inner, name)


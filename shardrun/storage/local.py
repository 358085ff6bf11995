"""The embedded store: one folder per account on a local (or mounted) file system.

Objects live at `<root>/<key>` so a user can browse them. Two reserved folders sit beside them:
`.shardrun-tmp/` for writes in progress (renamed into place, which is atomic on one file
system) and `.shardrun-meta/` caching each object's hashes, trusted only while the object's size
and mtime still match (so a file changed behind shardrun's back is hashed again).

**One writing machine per folder.** A local store's "server time" (Stat.mtime, which orders the
journal and measures leases) is the file's mtime, and the writing machine's clock sets it; two
machines writing one synced or network folder would have their clocks compared, which the
protocol promises never to do. So the first write records the machine in `.shardrun-host`, and a
store opened on another machine refuses to write there (reading is fine: one clock set every
time). Several workers on one machine share a folder freely. To move a job to a new machine for
good, delete `.shardrun-host`; to share a job between machines, use a store with a server clock
(Drive, or any fsspec filesystem backed by a server).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from shardrun.storage.account import Account
from shardrun.storage.backend import Backend
from shardrun.storage.base import COPY_BUFFER, Digest, Folder, Stat, Store, Usage, digest_bytes, digest_file
from shardrun.errors import InvalidKey, NotFound, PermissionDenied, QuotaExceeded, StoreError
from shardrun.paths import validate_key, validate_prefix

RESERVED_PREFIX = ".shardrun-"
HOST_FILE = ".shardrun-host"  # the one machine whose clock sets this folder's times
TMP_DIR = ".shardrun-tmp"
META_DIR = ".shardrun-meta"

# Hashes of objects smaller than this are recomputed on demand rather than cached in a sidecar:
# journal events are tiny and numerous, and a sidecar each would double the folder's file count.
CACHE_DIGEST_FROM = 1 << 20

# Usage is recounted from disk (a walk) only when a write comes this close to the quota, or when
# the cached count is older than this many writes; other processes may write to the same folder.
RECOUNT_MARGIN = 0.95
RECOUNT_EVERY = 1000


def host_identity() -> str:
    """Returns this machine's identity: its host name and, where the system has one, its machine id."""
    import socket

    machine = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            machine = Path(path).read_text().strip()[:12]
            break
        except OSError:
            continue
    return f"{socket.gethostname()}/{machine}" if machine else socket.gethostname()


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike, quota_bytes: int | None = None, url: str | None = None,
                 host: str | None = None):
        """`host`: this machine's identity (default host_identity(); tests pretend to be others)."""
        self.host = host or host_identity()
        self._host_checked = False
        self.root = Path(root).expanduser().resolve()
        self.url = url or f"local://{self.root}"
        self.quota_bytes = quota_bytes
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.url}: {self.root} is a file, not a folder")
        self._root_existed = self.root.is_dir()
        self._lock = threading.Lock()
        self._used: int | None = None
        self._writes_since_count = 0

    # -- helpers ----------------------------------------------------------------------------

    def _make_folders(self) -> None:
        # Created on the first write only, so reading (a dry run, `status`) never changes disk.
        # A folder that existed when the store was opened and is gone now is an error: writing
        # into a new empty folder would silently start a second journal.
        if self._root_existed and not self.root.is_dir():
            raise StoreError(f"{self.url}: the store folder {self.root} has disappeared")
        self._root_existed = True
        try:
            (self.root / TMP_DIR).mkdir(parents=True, exist_ok=True)
        except PermissionError as e:
            raise PermissionDenied(f"{self.url}: cannot create the store folder: {e.strerror}") from e
        except OSError as e:
            raise StoreError(f"{self.url}: cannot use {self.root} as a store: {e.strerror}") from e
        if not self._host_checked:
            self._check_host()

    def _check_host(self) -> None:
        """Records this machine as the folder's writer, or refuses if another machine is (module docstring)."""
        marker = self.root / HOST_FILE
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = marker.read_text(encoding="utf-8", errors="replace").strip()
            if owner and owner != self.host:
                raise StoreError(
                    f"{self.url}: this folder's times are set by the clock of machine {owner!r}, which writes "
                    f"to it; this machine ({self.host!r}) must not write there too, or the journal would "
                    f"compare two clocks. Share a job between machines on a store with a server clock (Drive), "
                    f"or, if the job has moved here for good, delete {marker}") from None
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.host + "\n")
        self._host_checked = True

    def _path(self, key: str) -> Path:
        if key.split("/", 1)[0].startswith(RESERVED_PREFIX):
            raise InvalidKey(f"store key {key!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        return self.root / key

    def _meta_path(self, key: str) -> Path:
        return self.root / META_DIR / (key + ".json")

    def _entries(self, folder: Path, rel: str):
        """Yields (key, DirEntry) of every object under `folder`; reserved folders are skipped."""
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if not rel and entry.name.startswith(RESERVED_PREFIX):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                yield from self._entries(Path(entry.path), f"{rel}{entry.name}/")
            else:
                yield f"{rel}{entry.name}", entry

    def _count_used(self) -> int:
        total = 0
        for _, entry in self._entries(self.root, ""):
            try:
                total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                pass  # deleted by another process during the walk
        return total

    def _reserve(self, key: str, size: int, replaced: int) -> None:
        """Raises QuotaExceeded unless `size` more bytes (minus `replaced`) fit in the quota."""
        if self.quota_bytes is None:
            return
        with self._lock:
            stale = self._used is None or self._writes_since_count >= RECOUNT_EVERY
            if not stale and self._used - replaced + size > self.quota_bytes * RECOUNT_MARGIN:
                stale = True
            if stale:
                self._used = self._count_used()
                self._writes_since_count = 0
            if self._used - replaced + size > self.quota_bytes:
                raise QuotaExceeded(
                    f"{self.url}: no room for {key} ({size:,} bytes): "
                    f"{self._used:,} of {self.quota_bytes:,} bytes used"
                )

    def _account(self, delta: int) -> None:
        with self._lock:
            if self._used is not None:
                self._used += delta
                self._writes_since_count += 1

    def _remember_digest(self, key: str, path: Path, digest: Digest) -> Stat:
        st = path.stat()
        if st.st_size < CACHE_DIGEST_FROM:
            return Stat(key, st.st_size, st.st_mtime_ns / 1e9, digest.md5, digest.sha256)
        meta = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": digest.md5, "sha256": digest.sha256}
        meta_path = self._meta_path(key)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = meta_path.with_name(f"{meta_path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
        return Stat(key, st.st_size, st.st_mtime_ns / 1e9, digest.md5, digest.sha256)

    # -- primitives -------------------------------------------------------------------------

    def _write(self, key: str, source: BinaryIO, digest: Digest) -> Stat:
        path = self._path(key)
        try:
            replaced = path.stat().st_size if path.is_file() else 0
        except OSError:
            replaced = 0
        self._reserve(key, digest.size, replaced)
        self._make_folders()
        fd, tmp_name = tempfile.mkstemp(dir=self.root / TMP_DIR, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, COPY_BUFFER)
                out.flush()
                os.fsync(out.fileno())
            written = os.path.getsize(tmp_name)
            if written != digest.size:
                raise StoreError(f"{self.url}: {key}: wrote {written} bytes, expected {digest.size}")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, path)
        except OSError as e:
            _remove_quietly(tmp_name)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise QuotaExceeded(f"{self.url}: the disk is full while writing {key}") from e
            if isinstance(e, PermissionError):
                raise PermissionDenied(f"{self.url}: cannot write {key}: {e.strerror}") from e
            raise StoreError(f"{self.url}: cannot write {key}: {e.strerror or e}") from e
        except BaseException:
            _remove_quietly(tmp_name)
            raise
        self._account(digest.size - replaced)
        return self._remember_digest(key, path, digest)

    def _read(self, key: str, offset: int = 0) -> BinaryIO:
        path = self._path(key)
        try:
            stream = open(path, "rb")
        except FileNotFoundError as e:
            raise NotFound(f"{self.url}: no object {key}") from e
        except IsADirectoryError as e:
            raise NotFound(f"{self.url}: {key} is a folder, not an object") from e
        except PermissionError as e:
            raise PermissionDenied(f"{self.url}: cannot read {key}: {e.strerror}") from e
        if offset:
            stream.seek(offset)
        return stream

    def get_with_stat(self, key: str) -> tuple[bytes, Stat]:
        validate_key(key)
        with self._read(key) as stream:
            st = os.fstat(stream.fileno())
            data = stream.read()
        digest = digest_bytes(data)
        return data, Stat(key, st.st_size, st.st_mtime_ns / 1e9, digest.md5, digest.sha256)

    def _stat(self, key: str) -> Stat:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError as e:
            raise NotFound(f"{self.url}: no object {key}") from e
        if not path.is_file():
            raise NotFound(f"{self.url}: {key} is a folder, not an object")
        try:
            meta = json.loads(self._meta_path(key).read_text())
            if meta["size"] == st.st_size and meta["mtime_ns"] == st.st_mtime_ns:
                return Stat(key, st.st_size, st.st_mtime_ns / 1e9, meta["md5"], meta["sha256"])
        except (OSError, ValueError, KeyError):
            pass  # no cached hashes, or stale ones: hash the file again below
        return self._remember_digest(key, path, digest_file(path))

    def _list(self, prefix: str) -> list[Stat]:
        stats = []
        for key, entry in self._listed(prefix):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # deleted during the listing
            stats.append(Stat(key, st.st_size, st.st_mtime_ns / 1e9))
        return stats

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(key for key, _ in self._listed(validate_prefix(prefix)))

    def _list_folder(self, prefix: str) -> Folder:
        # One scandir of the folder itself: sub-folders are named, not walked.
        try:
            entries = list(os.scandir(self.root / prefix)) if prefix else list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return Folder([], [])
        objects, folders = [], []
        for entry in entries:
            if not prefix and entry.name.startswith(RESERVED_PREFIX):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
                    continue
                st = entry.stat()
            except FileNotFoundError:
                continue  # deleted during the listing
            objects.append(Stat(prefix + entry.name, st.st_size, st.st_mtime_ns / 1e9))
        return Folder(objects, folders)

    def _listed(self, prefix: str):
        # Walk only the folder the prefix names, so listing journal/ ignores shards/ entirely.
        folder, _, _ = prefix.rpartition("/")
        start = f"{folder}/" if folder else ""
        return ((key, entry) for key, entry in self._entries(self.root / folder, start) if key.startswith(prefix))

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError as e:
            raise NotFound(f"{self.url}: no object {key}") from e
        except PermissionError as e:
            raise PermissionDenied(f"{self.url}: cannot delete {key}: {e.strerror}") from e
        _remove_quietly(self._meta_path(key))
        self._account(-size)

    def usage(self) -> Usage:
        used = self._count_used()
        with self._lock:
            self._used = used
            self._writes_since_count = 0
        return Usage(used, self.quota_bytes)


def _remove_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class LocalBackend(Backend):
    """`local:///abs/path` or `local://rel/path`: a folder, relative ones to the job file's folder."""

    scheme = "local"

    def root(self, url: str, base_dir: Path | None) -> Path:
        """Returns the folder the URL names; a relative one is relative to `base_dir` (else the cwd)."""
        path = Path(unquote(self.location(url))).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        return path

    def absolute_url(self, url: str, base_dir: Path | None) -> str:
        return f"local://{self.root(url, base_dir)}"

    def open(self, account: Account) -> LocalStore:
        return LocalStore(self.root(account.url, account.base_dir), account.quota_bytes, url=account.url)

    def describe(self, account: Account) -> str:
        return "local folder (this machine's user)"


BACKEND = LocalBackend()

"""A store on any fsspec filesystem: S3 (s3fs), GCS (gcsfs), or another protocol fsspec knows.

Written on fsspec's primitives (`open`, `pipe_file`, `cat_file`, `info`, `find`, `mv`, `rm_file`),
with what differs between object stores and file systems kept to a few branches:

- **Atomic puts.** On S3 and GCS one object's write is atomic on the server: a single PUT, or a
  multipart upload that becomes visible only when completed (fsspec's `autocommit=False` file,
  committed once every byte is sent, discarded on failure). Other protocols write a temporary
  key under `.shardrun-tmp/` and `mv` it into place (a rename on local disks, one dict
  assignment in fsspec's memory filesystem).
- **Server time.** `Stat.mtime` is the object's own metadata (S3's LastModified, GCS's
  `updated`, a file's mtime), read back after the write: never the writer's clock. S3 reports
  whole seconds (`time_resolution` 1.0): events in one second are ordered by their ids.
- **Hashes.** An S3 single-part ETag is the object's MD5; multipart uploads carry the md5 in the
  object's metadata (`x-amz-meta-md5`). GCS gives `md5Hash`. Other protocols are hashed by reading.
- **Quota** is the account's `quota_gb`, a cap on the total size under the store's prefix.
- **Errors** become the store's vocabulary; transient ones are retried with tenacity's jittered
  exponential backoff (the Drive backend's RetryPolicy).
"""

from __future__ import annotations

import base64
import errno
import io
import logging
import re
import shutil
import threading
import time
import uuid
from datetime import datetime
from typing import Any, BinaryIO, Callable, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay
from tenacity import wait_random_exponential

from shardrun.errors import InvalidKey, NotFound, PermissionDenied, QuotaExceeded, StoreError, TransientError
from shardrun.storage.account import Account
from shardrun.storage.base import COPY_BUFFER, Digest, Folder, Stat, Store, Usage
from shardrun.storage.fsspec_store.settings import (
    LOCAL_PROTOCOLS,
    OBJECT_STORES,
    FsspecSettings,
    Target,
    install_hint,
)
from shardrun.storage.retry import RetryPolicy

log = logging.getLogger("shardrun.storage.fsspec")

T = TypeVar("T")

RESERVED_PREFIX = ".shardrun-"
TMP_DIR = ".shardrun-tmp"
MIB = 1024 * 1024
# Objects up to this size are written with one PUT (their S3 ETag is their MD5) and read with one
# GET; larger ones stream as multipart uploads and ranged reads.
SINGLE_REQUEST_BYTES = 16 * MIB
# Usage is recounted (a listing of the prefix) only when a write comes this close to the quota,
# or every so many writes: other workers write to the same prefix.
RECOUNT_MARGIN = 0.95
RECOUNT_EVERY = 1000

_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
# Exceptions of the clients below fsspec (botocore, aiohttp, google-auth) named rather than
# imported, so the generic path never imports a client it does not use.
_CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError",
                      "ProfileNotFound", "NoAuthTokenError"}
_TRANSIENT_ERRORS = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                     "ClientOSError", "ServerDisconnectedError", "ClientConnectorError", "ClientPayloadError",
                     "FSTimeoutError", "HTTPClientError", "ResponseStreamingError", "IncompleteRead",
                     "ProxyConnectionError", "FileExpired", "TransportError", "RetryError"}
_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.EPIPE, errno.ESTALE, getattr(errno, "EREMOTEIO", 121)}


class _Retry(Exception):
    """A failure worth another attempt; `why` says what it was, for the final message."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def _class_names(e: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(e).__mro__}


def server_time(info: dict) -> float | None:
    """Returns the store's time of an object's last write from its fsspec info, or None if it has none."""
    for field in ("LastModified", "updated", "mtime", "last_modified", "modified", "created"):
        value = info.get(field)
        if value in (None, ""):
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


class FsspecStore(Store):
    """One account's objects under `target.root` on an fsspec filesystem."""

    def __init__(self, fs: Any, target: Target, url: str, quota_bytes: int | None = None,
                 retry: RetryPolicy | None = None, endpoint_url: str | None = None,
                 single_request_bytes: int = SINGLE_REQUEST_BYTES):
        self.fs = fs
        self.target = target
        self.url = url
        self.quota_bytes = quota_bytes
        self.retry = retry or RetryPolicy()
        self.endpoint_url = endpoint_url
        self.single_request_bytes = single_request_bytes
        self.protocol = target.protocol
        self.object_store = target.protocol in OBJECT_STORES
        self.s3 = target.protocol in ("s3", "s3a")
        # S3's LastModified has whole seconds; GCS's `updated` milliseconds; file systems finer.
        self.time_resolution = 1.0 if self.s3 else 0.001 if self.object_store else 0.0
        self.root = fs._strip_protocol(self._fsspec_url(target)).rstrip("/") or "/"
        self._bucket_checked = False
        self._lock = threading.Lock()
        self._used: int | None = None
        self._writes_since_count = 0

    @staticmethod
    def _fsspec_url(target: Target) -> str:
        return f"{target.protocol}://{target.root}"

    # -- helpers ----------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        if key.split("/", 1)[0].startswith(RESERVED_PREFIX):
            raise InvalidKey(f"store key {key!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        return f"{self.root}/{key}"

    def _key_of(self, name: str) -> str | None:
        name = name.rstrip("/")
        if not name.startswith(self.root.rstrip("/") + "/"):
            return None
        key = name[len(self.root.rstrip("/")) + 1:]
        return None if key.split("/", 1)[0].startswith(RESERVED_PREFIX) else key

    def sign_in_hint(self) -> str:
        """Returns what to do when no credentials were found, for the protocol's own sign-in."""
        if self.s3:
            return ("no AWS credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                    "AWS_PROFILE, or profile = \"...\" for the account), or anon = true for a public bucket")
        if self.object_store:
            return ("no Google credentials were found: set GOOGLE_APPLICATION_CREDENTIALS to a service-account "
                    "key, or run `gcloud auth application-default login`")
        return f"the {self.protocol} filesystem found no credentials: give them in the account's storage_options"

    def _where(self) -> str:
        if self.s3:
            return f"bucket {self.target.bucket!r} ({self.endpoint_url or 'AWS S3'})"
        if self.object_store:
            return f"bucket {self.target.bucket!r} (Google Cloud Storage)"
        return f"{self.protocol} path {self.root}"

    def _classify(self, what: str, e: BaseException, on_missing: Callable[[], Exception] | None) -> BaseException:
        """Returns the store's error for a failure of `what` (a _Retry where worth another attempt)."""
        names = _class_names(e)
        if names & _CREDENTIAL_ERRORS:
            return PermissionDenied(f"{self.url}: {what}: {self.sign_in_hint()}")
        if isinstance(e, PermissionError):
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            return PermissionDenied(f"{self.url}: {what}: access denied ({first}); the credentials may not "
                                    f"use {self._where()}")
        if isinstance(e, FileNotFoundError):
            return on_missing() if on_missing else NotFound(f"{self.url}: no object for {what}")
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return QuotaExceeded(f"{self.url}: {what}: the filesystem is full")
        if names & _TRANSIENT_ERRORS or isinstance(e, (ConnectionError, TimeoutError)) or (
                isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS):
            return _Retry(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))
        return StoreError(f"{self.url}: {what} failed: {type(e).__name__}: {e}")

    def _call(self, what: str, attempt: Callable[[], T], on_missing: Callable[[], Exception] | None = None) -> T:
        """Returns `attempt()`, retried with jittered exponential backoff while it fails transiently."""
        policy = self.retry
        started = time.monotonic()

        def one_try():
            try:
                return attempt()
            except (StoreError, _Retry):
                raise
            except Exception as e:
                raise self._classify(what, e, on_missing) from e

        def log_retry(state: RetryCallState):
            why = state.outcome.exception().why if state.outcome else "?"
            log.info("%s: %s failed (%s); retry %d", self.url, what, why, state.attempt_number)

        retrying = Retrying(
            retry=retry_if_exception_type(_Retry),
            stop=stop_after_attempt(max(1, policy.attempts)) | stop_after_delay(policy.total_seconds),
            wait=wait_random_exponential(multiplier=policy.first_wait_seconds, max=policy.max_wait_seconds),
            before_sleep=log_retry, reraise=True)
        try:
            return retrying(one_try)
        except _Retry as e:
            raise TransientError(f"{self.url}: {what} kept failing for {time.monotonic() - started:.0f} s "
                                 f"({e.why}); try again later") from e

    def _ensure_bucket(self) -> None:
        # A missing bucket would otherwise read as an empty store (a listing finds nothing): say so once.
        if not self.object_store or self._bucket_checked:
            return
        bucket = self.target.bucket

        def missing() -> Exception:
            return StoreError(f"{self.url}: the bucket {bucket!r} does not exist"
                              + (f" at {self.endpoint_url}" if self.endpoint_url else "")
                              + "; create it or correct the store URL")

        self._call(f"looking up bucket {bucket!r}", lambda: self.fs.info(bucket), missing)
        self._bucket_checked = True

    # -- quota --------------------------------------------------------------------------------

    def _count_used(self) -> int:
        self._ensure_bucket()
        try:
            found = self._call("listing", lambda: self.fs.find(self.root, detail=True), _Empty)
        except _Empty:
            return 0
        return sum(int(info.get("size") or 0) for name, info in found.items()
                   if info.get("type") == "file" and self._key_of(name) is not None)

    def _reserve(self, key: str, size: int) -> int | None:
        """Raises QuotaExceeded unless `size` more bytes fit; returns the replaced object's size
        where it had to be looked up (None: not looked up)."""
        if self.quota_bytes is None:
            return None
        with self._lock:
            stale = (self._used is None or self._writes_since_count >= RECOUNT_EVERY
                     or self._used + size > self.quota_bytes * RECOUNT_MARGIN)
        if stale:
            used = self._count_used()
            with self._lock:
                self._used, self._writes_since_count = used, 0
        with self._lock:
            used = self._used or 0
        if used + size <= self.quota_bytes:
            return None
        try:
            replaced = self._stat_of(key, self._info(key), need_md5=False).size
        except NotFound:
            replaced = 0
        if used - replaced + size > self.quota_bytes:
            raise QuotaExceeded(f"{self.url}: no room for {key} ({size:,} bytes): "
                                f"{used:,} of {self.quota_bytes:,} bytes used")
        return replaced

    def _account(self, delta: int) -> None:
        with self._lock:
            if self._used is not None:
                self._used += delta
                self._writes_since_count += 1

    # -- primitives -------------------------------------------------------------------------

    def _write(self, key: str, source: BinaryIO, digest: Digest) -> Stat:
        path = self._path(key)
        self._ensure_bucket()
        replaced = self._reserve(key, digest.size)
        if self.object_store:
            self._call(f"writing {key}", lambda: self._upload(path, source, digest), self._no_bucket)
        else:
            tmp = f"{self.root}/{TMP_DIR}/{uuid.uuid4().hex}"
            try:
                self._call(f"writing {key}", lambda: self._upload(tmp, source, digest))
                self._call(f"moving {key} into place", lambda: self._move(tmp, path))
            except BaseException:
                try:
                    self.fs.rm_file(tmp)
                except Exception:  # noqa: BLE001 (a leftover temporary key is harmless: listings skip it)
                    pass
                raise
        self._account(digest.size - (replaced or 0))
        stat = self._stat_of(key, self._info(key), need_md5=False)
        # The store's time comes from the object read back; the hashes are the ones just sent
        # (the read-back md5, where the store has one, must agree: put_file checks it).
        return Stat(key, stat.size, stat.mtime, stat.md5 or digest.md5, digest.sha256)

    def _no_bucket(self) -> Exception:
        return StoreError(f"{self.url}: the bucket {self.target.bucket!r} does not exist; create it or correct "
                          "the store URL")

    def _upload(self, path: str, source: BinaryIO, digest: Digest) -> None:
        source.seek(0)  # a retried attempt sends the object again from its start
        metadata = {"md5": digest.md5, "sha256": digest.sha256}
        if not self.object_store:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if digest.size <= self.single_request_bytes:
            data = source.read()
            if self.s3:
                self.fs.pipe_file(path, data, Metadata=metadata)
            else:
                self.fs.pipe_file(path, data)
            return
        # Multipart: the object appears only at commit, so a failure leaves nothing behind.
        options = {"Metadata": metadata} if self.s3 else {}
        out = self.fs.open(path, "wb", autocommit=False, block_size=max(5 * MIB, self.single_request_bytes), **options)
        try:
            shutil.copyfileobj(source, out, COPY_BUFFER)
            out.close()
            out.commit()
        except BaseException:
            out.discard()
            raise

    def _move(self, tmp: str, path: str) -> None:
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(tmp, path)

    def _info(self, key: str) -> dict:
        info = self._call(f"looking up {key}", lambda: self.fs.info(self._path(key)),
                          lambda: NotFound(f"{self.url}: no object {key}"))
        if info.get("type") != "file":
            raise NotFound(f"{self.url}: {key} is a folder, not an object")
        return info

    def _stat_of(self, key: str, info: dict, need_md5: bool) -> Stat:
        mtime = server_time(info)
        if mtime is None:
            raise StoreError(f"{self.url}: the {self.protocol} filesystem gives no modification time for {key}; "
                             "shardrun orders its journal by the store's time and cannot use it")
        md5 = sha256 = None
        etag = str(info.get("ETag") or "").strip('"')
        if _MD5_HEX.match(etag):
            md5 = etag  # a single-part upload's ETag is its MD5
        elif info.get("md5Hash"):
            md5 = base64.b64decode(info["md5Hash"]).hex()
        if md5 is None and need_md5:
            if self.s3:
                meta = self._call(f"reading the metadata of {key}", lambda: self.fs.metadata(self._path(key)))
                md5, sha256 = meta.get("md5"), meta.get("sha256")
            if md5 is None:
                md5 = self._md5_by_reading(key)
        return Stat(key, int(info.get("size") or 0), mtime, md5, sha256)

    def _md5_by_reading(self, key: str) -> str:
        import hashlib

        md5 = hashlib.md5()
        with self._read(key) as stream:
            while block := stream.read(COPY_BUFFER):
                md5.update(block)
        return md5.hexdigest()

    def _read(self, key: str, offset: int = 0) -> BinaryIO:
        path = self._path(key)
        missing = lambda: NotFound(f"{self.url}: no object {key}")  # noqa: E731
        size = int(self._info(key).get("size") or 0)
        if size - offset <= self.single_request_bytes:
            # One ranged GET (`cat_file`): a reader sees one version of the object, never a mix.
            # (A file object would not do: fsspec's memory filesystem shares one between readers.)
            return io.BytesIO(self._call(f"reading {key}", lambda: self.fs.cat_file(path, start=offset or None),
                                         missing))
        stream = self._call(f"reading {key}", lambda: self.fs.open(path, "rb", block_size=self.single_request_bytes),
                            missing)
        if offset:
            stream.seek(offset)
        return _Reading(stream, self, key)

    def get_with_stat(self, key: str) -> tuple[bytes, Stat]:
        data = self.get_bytes(key)
        import hashlib

        stat = self._stat_of(key, self._info(key), need_md5=False)
        return data, Stat(key, stat.size, stat.mtime, hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest())

    def _stat(self, key: str) -> Stat:
        return self._stat_of(key, self._info(key), need_md5=True)

    def _list(self, prefix: str) -> list[Stat]:
        self._ensure_bucket()
        folder = prefix.rpartition("/")[0]
        base = f"{self.root}/{folder}" if folder else self.root
        try:
            found = self._call(f"listing {prefix or '/'}", lambda: self.fs.find(base, detail=True), _Empty)
        except _Empty:
            return []  # the folder the prefix names does not exist: nothing under it
        stats = []
        for name, info in found.items():
            key = self._key_of(name)
            if key is None or info.get("type") != "file" or not key.startswith(prefix):
                continue
            stats.append(self._stat_of(key, info, need_md5=False))
        return stats

    def _list_folder(self, prefix: str) -> Folder:
        # fsspec's `ls` lists one level (on S3 and GCS a delimiter listing: sub-folders are named,
        # not walked).
        self._ensure_bucket()
        base = f"{self.root}/{prefix.rstrip('/')}" if prefix else self.root
        try:
            found = self._call(f"listing {prefix or '/'}", lambda: self.fs.ls(base, detail=True, refresh=True), _Empty)
        except _Empty:
            return Folder([], [])
        objects, folders = [], []
        for info in found:
            key = self._key_of(info["name"])
            if key is None or not key.startswith(prefix) or key == prefix.rstrip("/"):
                continue
            name = key[len(prefix):]
            if "/" in name:
                continue
            if info.get("type") == "directory":
                folders.append(name)
            elif info.get("type") == "file":
                objects.append(self._stat_of(key, info, need_md5=False))
        return Folder(objects, folders)

    def _delete(self, key: str) -> None:
        info = self._info(key)  # S3's DELETE succeeds on a missing key: look first, so NotFound is told
        self._call(f"deleting {key}", lambda: self.fs.rm_file(self._path(key)),
                   lambda: NotFound(f"{self.url}: no object {key}"))
        self._account(-int(info.get("size") or 0))

    def usage(self) -> Usage:
        used = self._count_used()
        with self._lock:
            self._used, self._writes_since_count = used, 0
        return Usage(used, self.quota_bytes)

    def identity(self) -> str | None:
        if self.object_store:
            where = self.target.bucket + (f"/{self.target.prefix}" if self.target.prefix else "")
            kind = "s3" if self.s3 else "gcs"
            return f"{kind} bucket {where} ({self.endpoint_url or ('AWS S3' if self.s3 else 'Google Cloud Storage')})"
        return None


class _Empty(NotFound):
    """A listing of a folder that does not exist: no objects."""


class _Reading:
    """A large object's stream whose read failures are told in the store's vocabulary."""

    def __init__(self, inner, store: FsspecStore, key: str):
        self.inner, self.store, self.key = inner, store, key

    def read(self, size: int = -1) -> bytes:
        try:
            return self.inner.read(size)
        except Exception as e:
            error = self.store._classify(f"reading {self.key}", e, None)
            if isinstance(error, _Retry):
                raise TransientError(f"{self.store.url}: reading {self.key} failed ({error.why}); "
                                     "the download resumes from where it stopped") from e
            raise error from e

    def close(self) -> None:
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def filesystem_options(target: Target, settings: FsspecSettings) -> dict[str, Any]:
    """Returns the keyword arguments the protocol's filesystem is built with (may hold secrets)."""
    options: dict[str, Any] = {}
    if target.protocol in OBJECT_STORES:
        options["use_listings_cache"] = False  # every listing asks the server: other workers write too
    if target.protocol in ("s3", "s3a"):
        if settings.endpoint_url:
            options["endpoint_url"] = settings.endpoint_url
        if settings.profile:
            options["profile"] = settings.profile
        if settings.anon:
            options["anon"] = True
    elif target.protocol in ("gcs", "gs") and settings.anon:
        options["token"] = "anon"
    if target.protocol in LOCAL_PROTOCOLS:
        options["auto_mkdir"] = True
    options.update(settings.storage_options)
    return options


def open_fsspec_store(account: Account, target: Target, settings: FsspecSettings) -> FsspecStore:
    """Returns the account's store on its fsspec filesystem (nothing is asked of the server yet)."""
    try:
        import fsspec
    except ImportError as e:
        raise StoreError(f"{account.url}: fsspec stores need fsspec, which is not installed; "
                         f"{install_hint(target.protocol)}") from e
    try:
        cls = fsspec.get_filesystem_class(target.protocol)
    except ImportError as e:
        raise StoreError(f"{account.url}: the {target.protocol} filesystem needs a package that is not installed "
                         f"({str(e).splitlines()[0]}); {install_hint(target.protocol)}") from e
    except ValueError as e:
        raise StoreError(f"{account.url}: fsspec knows no protocol {target.protocol!r}") from e
    try:
        fs = cls(skip_instance_cache=True, **filesystem_options(target, settings))
    except TypeError as e:
        raise StoreError(f"{account.url}: the {target.protocol} filesystem refused its options "
                         f"({', '.join(sorted(filesystem_options(target, settings)))}): {e}") from e
    retry = RetryPolicy(attempts=settings.retries + 1, total_seconds=settings.retry_seconds)
    return FsspecStore(fs, target, account.url, account.quota_bytes, retry, settings.endpoint_url)

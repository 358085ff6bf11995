"""An in-process store for tests and dry runs; `memory://NAME` opens the same store by name."""

from __future__ import annotations

import io
import threading
from typing import BinaryIO

from shardrun.clock import Clock, SystemClock
from shardrun.storage.account import Account
from shardrun.storage.backend import Backend
from shardrun.storage.base import Digest, Stat, Store, Usage
from shardrun.errors import NotFound, QuotaExceeded

_NAMED: dict[str, "MemoryStore"] = {}
_NAMED_LOCK = threading.Lock()


class MemoryStore(Store):
    def __init__(self, quota_bytes: int | None = None, clock: Clock | None = None, url: str = "memory://"):
        self.url = url
        self.quota_bytes = quota_bytes
        self.clock = clock or SystemClock()
        self._objects: dict[str, tuple[bytes, Stat]] = {}
        self._lock = threading.Lock()

    @classmethod
    def named(cls, name: str, quota_bytes: int | None = None) -> "MemoryStore":
        """Returns the process-wide store called `name`, creating it on first use."""
        with _NAMED_LOCK:
            store = _NAMED.get(name)
            if store is None:
                store = _NAMED[name] = cls(quota_bytes, url=f"memory://{name}")
            elif quota_bytes is not None:
                store.quota_bytes = quota_bytes
            return store

    def _write(self, key: str, source: BinaryIO, digest: Digest) -> Stat:
        data = source.read()
        with self._lock:
            replaced = len(self._objects[key][0]) if key in self._objects else 0
            used = sum(len(d) for d, _ in self._objects.values())
            if self.quota_bytes is not None and used - replaced + len(data) > self.quota_bytes:
                raise QuotaExceeded(
                    f"{self.url}: no room for {key} ({len(data):,} bytes): "
                    f"{used:,} of {self.quota_bytes:,} bytes used"
                )
            stat = Stat(key, len(data), self.clock.now(), digest.md5, digest.sha256)
            self._objects[key] = (data, stat)  # one dict assignment: readers see old or new
            return stat

    def _get(self, key: str) -> tuple[bytes, Stat]:
        try:
            return self._objects[key]
        except KeyError:
            raise NotFound(f"{self.url}: no object {key}") from None

    def _read(self, key: str, offset: int = 0) -> BinaryIO:
        data, _ = self._get(key)
        return io.BytesIO(data[offset:])

    def _stat(self, key: str) -> Stat:
        return self._get(key)[1]

    def _list(self, prefix: str) -> list[Stat]:
        with self._lock:
            return [stat for key, (_, stat) in self._objects.items() if key.startswith(prefix)]

    def _delete(self, key: str) -> None:
        with self._lock:
            if self._objects.pop(key, None) is None:
                raise NotFound(f"{self.url}: no object {key}")

    def usage(self) -> Usage:
        with self._lock:
            return Usage(sum(len(d) for d, _ in self._objects.values()), self.quota_bytes)

    def corrupt(self, key: str, data: bytes) -> None:
        """Replaces an object's bytes but keeps its old Stat (a test double for bit rot)."""
        with self._lock:
            _, stat = self._get(key)
            self._objects[key] = (data, stat)


class MemoryBackend(Backend):
    """`memory://NAME`: the process-wide in-memory store of that name."""

    scheme = "memory"

    def open(self, account: Account) -> MemoryStore:
        return MemoryStore.named(self.location(account.url), account.quota_bytes)

    def describe(self, account: Account) -> str:
        return "in-process memory"


BACKEND = MemoryBackend()

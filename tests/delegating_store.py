"""A store that hands every call to another store: test doubles subclass it and change one thing."""

from __future__ import annotations

from typing import BinaryIO

from shardrun.storage.base import Digest, Stat, Store, Usage


class DelegatingStore(Store):
    def __init__(self, inner: Store):
        self.inner = inner
        self.url = inner.url

    def _write(self, key: str, source: BinaryIO, digest: Digest) -> Stat:
        return self.inner._write(key, source, digest)

    def _read(self, key: str, offset: int = 0) -> BinaryIO:
        return self.inner._read(key, offset)

    def _stat(self, key: str) -> Stat:
        return self.inner._stat(key)

    def get_with_stat(self, key: str) -> tuple[bytes, Stat]:
        return self.inner.get_with_stat(key)

    def _list(self, prefix: str) -> list[Stat]:
        return self.inner.list(prefix)

    def _delete(self, key: str) -> None:
        self.inner._delete(key)

    def usage(self) -> Usage:
        return self.inner.usage()

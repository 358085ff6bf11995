"""A test double of the store whose listings lag behind its writes, as Google Drive's can.

`LaggingStore` wraps a real store (LocalStore, MemoryStore) and keeps to the store contract by
delegation, with one difference: an object another client wrote stays out of `list` and
`list_keys` for a random delay after its server time of write, while `get`, `stat` and `download`
see it at once. Each view draws its own delays (from its seed and the key), so two workers given
two views of one store disagree about what exists, and objects surface out of write order.
"""

from __future__ import annotations

import random
import threading
import time
from typing import BinaryIO, Callable

from shardrun.storage.base import Digest, Stat, Store
from shardrun.paths import validate_prefix
from tests.delegating_store import DelegatingStore


class LaggingStore(DelegatingStore):
    def __init__(self, inner: Store, max_lag_s: float, *, min_lag_s: float = 0.0, seed: int | str = 0,
                 lag_own_writes: bool = False, now: Callable[[], float] = time.time):
        """`now` must tell the inner store's time (its Stat mtimes): the wall clock for a LocalStore."""
        if not 0 <= min_lag_s <= max_lag_s:
            raise ValueError(f"lags must satisfy 0 <= min_lag_s <= max_lag_s, got {min_lag_s!r}, {max_lag_s!r}")
        super().__init__(inner)
        self.min_lag_s = min_lag_s
        self.max_lag_s = max_lag_s
        self.seed = seed
        self.lag_own_writes = lag_own_writes
        self.now = now
        self.hidden = 0  # objects left out of listings so far: tests check the lag really bit
        self._own: set[str] = set()
        self._lock = threading.Lock()

    def lag(self, key: str) -> float:
        """Returns how long `key` stays out of this view's listings after it was written."""
        return random.Random(f"{self.seed}/{key}").uniform(self.min_lag_s, self.max_lag_s)

    def _visible(self, stat: Stat, now: float) -> bool:
        if stat.key in self._own and not self.lag_own_writes:
            return True
        return now >= stat.mtime + self.lag(stat.key)

    # -- the primitives, by delegation --

    def _write(self, key: str, source: BinaryIO, digest: Digest) -> Stat:
        stat = self.inner._write(key, source, digest)
        with self._lock:
            self._own.add(key)
        return stat

    def _list(self, prefix: str) -> list[Stat]:
        now = self.now()
        stats = self.inner.list(prefix)
        shown = [s for s in stats if self._visible(s, now)]
        with self._lock:
            self.hidden += len(stats) - len(shown)
        return shown

    def list_keys(self, prefix: str = "") -> list[str]:
        return [s.key for s in self.list(validate_prefix(prefix))]

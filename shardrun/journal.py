"""The job's journal: small immutable event objects under `<job>/journal/` on the home store.

Workers cannot reach a server, only the store, so every state change is an event written once
and never changed. An event's order is (server time, id): the server time is the store's time of
the write (from its Stat), never the writer's clock.
"""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from shardrun import paths
from shardrun.clock import Clock, SystemClock
from shardrun.storage.base import Store

KINDS = ("plan", "claim", "heartbeat", "checkpoint", "yield", "done", "fail", "expire", "leave")
READ_THREADS = 8  # reading many small objects is latency-bound (Drive), not CPU-bound


@dataclass(frozen=True)
class Event:
    id: str
    kind: str
    worker: str
    run: str | None = None
    chunk: int | None = None
    generation: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    server_time: float | None = None  # set from the store's Stat, not part of the object

    @property
    def order(self) -> tuple[float, str]:
        return (self.server_time if self.server_time is not None else float("inf"), self.id)

    def to_bytes(self) -> bytes:
        body = {"id": self.id, "kind": self.kind, "worker": self.worker, "run": self.run,
                "chunk": self.chunk, "generation": self.generation, "payload": self.payload}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, server_time: float) -> "Event":
        """Returns the event in `data`; raises ValueError when it is not a well-formed event."""
        body = json.loads(data)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or body.get("kind") not in KINDS:
            raise ValueError("not a shardrun event (missing id or unknown kind)")
        if not isinstance(body.get("payload", {}), dict):
            raise ValueError("event payload is not an object")
        return cls(body["id"], body["kind"], str(body.get("worker", "")), body.get("run"),
                   body.get("chunk"), body.get("generation"), body.get("payload") or {}, server_time)


def new_event_id(clock: Clock, after_us: int = 0) -> str:
    """Returns a unique id whose time prefix (microseconds) is above `after_us`.

    The store's time decides the order; the id breaks ties, which happen: file times tick every
    few milliseconds, and a test's fake clock not at all.
    """
    micros = max(int(clock.now() * 1e6), after_us + 1)
    return f"{micros:016x}-{os.getpid() % 0x10000:04x}-{uuid.uuid4().hex[:12]}"


class Journal:
    def __init__(self, store: Store, job: str, clock: Clock | None = None):
        self.store = store
        self.job = job
        self.clock = clock or SystemClock()
        self._last_us = 0  # one writer's events sort in the order written, even at one store time

    def append(self, kind: str, worker: str, run: str | None = None, chunk: int | None = None,
               generation: int | None = None, payload: dict | None = None) -> Event:
        """Writes a new event and returns it with the store's time of the write."""
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {', '.join(KINDS)}")
        event = Event(new_event_id(self.clock, self._last_us), kind, worker, run, chunk, generation, payload or {})
        self._last_us = int(event.id.split("-", 1)[0], 16)
        stat = self.store.put_bytes(paths.event_key(self.job, event.id), event.to_bytes())
        return replace(event, server_time=stat.mtime)

    def keys(self) -> list[str]:
        """Returns the key of every event object (cheap: names only, nothing is read)."""
        return self.store.list_keys(paths.journal_prefix(self.job))

    def read(self, keys: Iterable[str]) -> tuple[list[Event], list[tuple[str, str]]]:
        """Returns the events under `keys`, and (key, reason) for objects that are not events."""
        keys = list(keys)

        def load(key: str):
            try:
                data, stat = self.store.get_with_stat(key)  # the store's time of the write orders events
                event = Event.from_bytes(data, stat.mtime)
            except (ValueError, UnicodeDecodeError) as e:
                return None, (key, f"unreadable event: {e}")
            if event.id != paths.event_id_of(key):
                return None, (key, f"event id {event.id!r} does not match its key")
            return event, None

        with ThreadPoolExecutor(min(READ_THREADS, max(1, len(keys)))) as pool:
            results = list(pool.map(load, keys))
        events = [e for e, _ in results if e is not None]
        bad = [b for _, b in results if b is not None]
        return events, bad

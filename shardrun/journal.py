"""The job's journal: small immutable event objects under `<job>/journal/` on the home store.

Workers cannot reach a server, only the store, so every state change is an event written once
and never changed. An event's order is (server time, id): the server time is the store's time of
the write (from its Stat), never the writer's clock.

The layout (docs/worker.md, "The journal's layout") keeps every folder and every listing bounded:
events go to hour buckets, `journal/v2/<YYYY-MM>/<DDTHH>/<id>.json`, by the writer's estimate of
the store's time (its clock corrected by the store times its own writes came back with). A bucket
only places an event, it never orders one. An object whose bucket lies more than SKEW_S from its
store time is misplaced, and every reader refuses it alike (a bounded reader might never list its
bucket); a writer that finds it wrote one writes the same event again in the right bucket.
Journals of earlier shardrun versions kept every event flat in `journal/` (v1): still read.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from shardrun import paths
from shardrun.clock import Clock, SystemClock
from shardrun.storage.base import Store

KINDS = ("plan", "claim", "heartbeat", "checkpoint", "yield", "done", "fail", "expire", "leave", "close", "outer",
         "reject")
READ_THREADS = 8  # reading many small objects is latency-bound (Drive), not CPU-bound

# The bucketed layout's two tolerances (docs/worker.md): an object's bucket must lie within SKEW_S
# of its store time, and a listing may miss an object for up to LAG_S after its write. A sync
# therefore lists the buckets from its cursor minus WINDOW_S on.
SKEW_S = 3600.0
LAG_S = 3600.0
WINDOW_S = SKEW_S + LAG_S


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
    plan: str | None = None  # the plan in force as its writer knew it (None: an event of journal v1)

    @property
    def order(self) -> tuple[float, str]:
        return (self.server_time if self.server_time is not None else float("inf"), self.id)

    def to_bytes(self) -> bytes:
        body = {"id": self.id, "kind": self.kind, "worker": self.worker, "run": self.run,
                "chunk": self.chunk, "generation": self.generation, "payload": self.payload}
        if self.plan is not None:  # absent, not null: a v1 event's bytes stay what they were
            body["plan"] = self.plan
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def copy_rank(self) -> tuple[float, bytes]:
        """Returns what decides between two copies of one event id: the earliest store time wins,
        then the smaller bytes (every reader applies this, whatever copy it listed first)."""
        return (self.order[0], self.to_bytes())

    def problem(self) -> str | None:
        """Returns why this event cannot be folded (a malformed event), or None when it is well formed."""
        return event_problem(self)

    @classmethod
    def from_bytes(cls, data: bytes, server_time: float | None) -> "Event":
        """Returns the event in `data`; raises ValueError when it is not a well-formed event.

        Field types are checked strictly (a "generation": "0" is refused, as is a null or text
        step), here and for every event the ledger folds, so no reader's fold can raise on an
        event's content and every reader refuses the same events.
        """
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(body, dict):
            raise ValueError("not a shardrun event (not a JSON object)")
        event = cls(body.get("id"), body.get("kind"), body.get("worker", ""), body.get("run"),
                    body.get("chunk"), body.get("generation"), body.get("payload", {}), server_time,
                    body.get("plan"))
        reason = event.problem()
        if reason:
            raise ValueError(reason)
        return event


# -- what a well-formed event is -----------------------------------------------------------------

CHUNK_KINDS = ("claim", "heartbeat", "checkpoint", "yield", "done", "fail", "expire", "reject")
# A collaborative run's round events name the run and the round (in `chunk`): docs/collaborative.md.
ROUND_KINDS = ("close", "outer")
# The most (round, replica) units a plan may hold: a reader makes a row for each.
MAX_UNITS = 1_000_000


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check(ok: bool, reason: str) -> None:
    if not ok:
        raise ValueError(reason)


def _fields(obj: Any, where: str, spec: dict[str, Callable[[Any], bool]], optional: tuple[str, ...] = ()) -> None:
    _check(isinstance(obj, dict), f"{where} is not an object")
    for name, ok in spec.items():
        if name not in obj:
            _check(name in optional, f"{where} lacks {name!r}")
        else:
            _check(ok(obj[name]), f"{where} has a malformed {name!r}: {obj[name]!r}")


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _count(v: Any) -> bool:
    return _is_int(v) and 0 <= v < 2**63  # what SQLite stores as an integer


def _list_of(check: Callable[[Any], None]) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if not isinstance(v, list):
            return False
        for item in v:
            check(item)
        return True
    return ok


def _check_plan_payload(p: dict) -> None:
    """Raises ValueError unless `p` holds everything the fold reads from a plan (ledger.fold._plan_tables)."""
    account = lambda a: _fields(a, "a plan account", {  # noqa: E731
        "name": _str, "store": _str, "quota_bytes": _count, "reserve_bytes": _count})
    shard = lambda s: _fields(s, "a plan shard", {  # noqa: E731
        "id": _str, "account": _str, "key": _str, "size": _count, "md5": _opt_str, "images": _count})
    chunk = lambda c: _check(isinstance(c, list) and len(c) == 2 and all(_count(x) for x in c)  # noqa: E731
                             and c[0] <= c[1], f"a plan chunk is not [start, end] steps: {c!r}")
    run = lambda r: _fields(r, "a plan run", {  # noqa: E731
        "name": _str, "model": _str, "scale": _count, "channels": _count, "epochs": _count,
        "batch_size": _count, "patch_size": _count, "steps_per_epoch": _count, "steps_total": _count,
        "step_seconds": _is_number, "config": lambda c: isinstance(c, dict), "chunks": _list_of(chunk)})
    collaborative = lambda c: _fields(c, "a collaborative run", {  # noqa: E731
        "replicas": lambda v: _count(v) and v > 0, "sync_every": lambda v: _count(v) and v > 0,
        "rounds": _count, "steps_per_replica": _count, "min_replicas": lambda v: _count(v) and v > 0,
        "round_timeout_minutes": _is_number, "outer_lr": _is_number, "outer_momentum": _is_number})
    rejected = lambda r: _fields(r, "a rejected image", {"path": _str, "reason": _str})  # noqa: E731
    _fields(p, "the plan", {
        "plan_id": lambda v: isinstance(v, str) and bool(v), "replaces": _opt_str, "job": _str,
        "fingerprint": _str, "images": _count, "image_bytes": _count, "manifest_key": _str,
        "manifest_md5": _opt_str, "platform": _str, "profile": _str, "lease_seconds": _is_number,
        "accounts": _list_of(account), "shards": _list_of(shard), "runs": _list_of(run),
        "rejected": _list_of(rejected)}, optional=("replaces", "rejected"))
    for r in p["runs"]:
        if "collaborative" in r:
            collaborative(r["collaborative"])
            c = r["collaborative"]
            _check(c["rounds"] == -(-c["steps_per_replica"] // c["sync_every"]) and c["min_replicas"] <= c["replicas"],
                   f"run {r['name']!r}: its rounds, steps and replicas do not agree")
            _check(c["rounds"] * c["replicas"] <= MAX_UNITS, f"run {r['name']!r}: more than {MAX_UNITS} units")
            parts = c.get("parts")
            _check(isinstance(parts, list) and len(parts) == c["replicas"]
                   and all(isinstance(part, dict) and isinstance(part.get("shards"), list)
                           and all(isinstance(s, str) for s in part["shards"]) for part in parts),
                   f"run {r['name']!r}: its parts are not one list of shards per replica")
    names = [a["name"] for a in p["accounts"]]
    _check(len(set(names)) == len(names), "the plan names an account twice")
    _check(all(s["account"] in names for s in p["shards"]), "the plan places a shard on an account it lacks")
    _check(len({s["id"] for s in p["shards"]}) == len(p["shards"]), "the plan names a shard twice")
    _check(len({r["name"] for r in p["runs"]}) == len(p["runs"]), "the plan names a run twice")
    _check(len({r["path"] for r in p.get("rejected", [])}) == len(p.get("rejected", [])),
           "the plan rejects an image twice")


def event_problem(e: Event) -> str | None:
    """Returns why `e` is malformed (what the fold would have to guess at), or None."""
    try:
        _check(isinstance(e.id, str) and bool(e.id), "missing or malformed id")
        _check(e.kind in KINDS, f"unknown kind {e.kind!r}")
        _check(isinstance(e.worker, str), f"malformed worker {e.worker!r}")
        _check(_opt_str(e.run), f"malformed run {e.run!r}")
        _check(e.chunk is None or _count(e.chunk), f"malformed chunk {e.chunk!r}")
        _check(e.generation is None or _count(e.generation), f"malformed generation {e.generation!r}")
        _check(e.plan is None or (isinstance(e.plan, str) and bool(e.plan)), f"malformed plan {e.plan!r}")
        _check(isinstance(e.payload, dict), "payload is not an object")
        _check(_is_number(e.server_time), f"no usable server time ({e.server_time!r})")
        p = e.payload
        if e.kind == "plan":
            _check_plan_payload(p)
            _check(e.plan in (None, p["plan_id"]), f"a plan event naming another plan ({e.plan!r})")
        if e.kind in CHUNK_KINDS:
            _check(isinstance(e.run, str) and e.chunk is not None and e.generation is not None,
                   f"a {e.kind} event must name its run, chunk and generation")
        if e.kind in ("heartbeat", "checkpoint", "yield", "done") and "step" in p:
            _check(_count(p["step"]), f"malformed step {p['step']!r}")
        if e.kind in ("checkpoint", "yield", "done") and "key" in p:
            _check(p["key"] is None or isinstance(p["key"], str), f"malformed checkpoint key {p['key']!r}")
            _check(_opt_str(p.get("md5")), f"malformed checkpoint md5 {p.get('md5')!r}")
        if e.kind == "checkpoint":
            _check("step" in p and isinstance(p.get("key"), str), "a checkpoint event must carry its step and key")
        if e.kind in ("yield", "fail", "reject") and "reason" in p:
            _check(p["reason"] is None or isinstance(p["reason"], str), f"malformed reason {p['reason']!r}")
        if e.kind in ROUND_KINDS:
            _check(isinstance(e.run, str) and e.chunk is not None, f"a {e.kind} event must name its run and round")
        if e.kind == "done" and "change" in p:
            _fields(p["change"], "the change", {"key": _str, "sha256": _str, "md5": _opt_str, "size": _count,
                                                "base": _str}, optional=("base",))
        if e.kind == "outer":
            arrays = {"key": _str, "sha256": _str, "md5": _opt_str, "size": _count}
            _fields(p, "the outer step", {"weights": lambda v: _fields(v, "the global weights", arrays) is None,
                                          "momentum": lambda v: _fields(v, "the outer momentum", arrays) is None,
                                          "replicas": lambda v: isinstance(v, list) and all(_count(x) for x in v),
                                          "base": _str,
                                          "changes": lambda v: isinstance(v, list) and all(_str(x) for x in v)},
                    optional=("base", "changes"))
            _check(p.get("step") is None or _count(p["step"]), f"malformed step {p.get('step')!r}")
    except ValueError as err:
        return str(err)
    except (TypeError, KeyError, AttributeError) as err:  # a shape no check above foresaw
        return f"malformed event ({type(err).__name__}: {err})"
    return None


def new_event_id(clock: Clock | float, after_us: int = 0) -> str:
    """Returns a unique id whose time prefix (microseconds: `clock`'s time, or the time given) is
    above `after_us`.

    The store's time decides the order; the id breaks ties, which happen: file times tick every
    few milliseconds, and a test's fake clock not at all.
    """
    now = clock if isinstance(clock, (int, float)) else clock.now()
    micros = max(int(now * 1e6), after_us + 1)
    return f"{micros:016x}-{os.getpid() % 0x10000:04x}-{uuid.uuid4().hex[:12]}"


def well_placed(bucket: int, store_time: float) -> bool:
    """Returns whether the hour bucket starting at `bucket` lies within SKEW_S of `store_time`."""
    return bucket <= store_time + SKEW_S and bucket + paths.BUCKET_SECONDS > store_time - SKEW_S


MISPLACED = "misplaced: "


def misplaced_reason(bucket: int, store_time: float) -> str:
    hours = (store_time - bucket) / 3600
    return (f"{MISPLACED}written to the hour bucket {paths.bucket_folder(bucket)} at store time "
            f"{paths.bucket_folder(paths.bucket_start(store_time))} (by a clock about {abs(hours):.0f} h "
            f"{'behind' if hours > 0 else 'ahead of'} the store's; a bucket within {SKEW_S / 3600:g} h is placed)")


def next_month(first: int) -> int:
    """Returns the start of the month after the one starting at `first` (UTC)."""
    d = datetime.fromtimestamp(first, timezone.utc)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp())


class Journal:
    def __init__(self, store: Store, job: str, clock: Clock | None = None):
        self.store = store
        self.job = job
        self.clock = clock or SystemClock()
        self._last_us = 0  # one writer's events sort in the order written, even at one store time
        # The plan every event written names: the one in force as this writer last synced
        # (Ledger.sync sets it), so the fold can ignore what a writer did under a replaced plan.
        self.plan: str | None = None
        # The store's time minus this machine's clock, learnt from the last write's Stat: events
        # are placed (and their ids stamped) by the store's time as this writer best knows it.
        self.offset: float | None = None
        # A store time known to have passed (Ledger.sync sets it: the newest event it has seen);
        # before its first write a writer whose clock is behind it places by it instead.
        self.store_time_hint: float | None = None
        self.last_write_time: float | None = None  # the store time of this writer's last write

    def store_now(self) -> float:
        """Returns this writer's estimate of the store's time now."""
        local = self.clock.now()
        if self.offset is not None:
            return local + self.offset
        return max(local, self.store_time_hint) if self.store_time_hint is not None else local

    def append(self, kind: str, worker: str, run: str | None = None, chunk: int | None = None,
               generation: int | None = None, payload: dict | None = None) -> Event:
        """Writes a new event in the bucket of the store's time and returns it with the store's time
        of the write. A first write that came back misplaced (this machine's clock more than
        SKEW_S off the store's) is written once more, same event, in the bucket of its store time."""
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {', '.join(KINDS)}")
        now = self.store_now()
        event = Event(new_event_id(now, self._last_us), kind, worker, run, chunk, generation, payload or {},
                      plan=(payload or {}).get("plan_id") if kind == "plan" else self.plan)
        self._last_us = int(event.id.split("-", 1)[0], 16)
        data = event.to_bytes()
        bucket = paths.bucket_start(now)
        local = self.clock.now()
        stat = self.store.put_bytes(paths.bucket_event_key(self.job, bucket, event.id), data)
        self.offset = stat.mtime - local
        if not well_placed(bucket, stat.mtime):
            # Every reader refuses the misplaced copy; this one, in the right bucket, is the event.
            stat = self.store.put_bytes(paths.bucket_event_key(self.job, paths.bucket_start(stat.mtime), event.id),
                                        data)
        self.last_write_time = stat.mtime
        return replace(event, server_time=stat.mtime)

    def keys(self) -> list[str]:
        """Returns the key of every event object, flat and bucketed (a walk of the whole journal:
        for rebuilding a ledger and for tests; a sync lists a few buckets instead)."""
        # Only what a sync can list: objects directly in journal/ and in the buckets (a folder
        # copied in elsewhere under journal/ is no part of it, for a rebuild as for a sync).
        flat = paths.journal_prefix(self.job)
        return [k for k in self.store.list_keys(flat)
                if "/" not in k[len(flat):] or paths.bucket_of_key(self.job, k) is not None]

    def buckets(self, since: float | None) -> list[int]:
        """Returns the starts of the hour buckets that exist and end after `since` (all: None), in
        time order: one listing of journal/v2/ (a folder a month) and one of each month they fall in."""
        v2 = paths.journal_v2_prefix(self.job)
        starts = []
        for month in self.store.list_folder(v2).folders:
            first = paths.month_start(month)
            if first is None or (since is not None and next_month(first) <= since):
                continue
            for hour in self.store.list_folder(f"{v2}{month}/").folders:
                start = paths.bucket_start_of(month, hour)
                if start is not None and (since is None or start + paths.BUCKET_SECONDS > since):
                    starts.append(start)
        return sorted(starts)

    def listing(self, since: float | None = None) -> dict[str, float]:
        """Returns each event object's key in the buckets that end after `since` (every bucket:
        None), with its store time as the listing gives it (on Drive, the copy that is the key's)."""
        starts = self.buckets(since)
        if not starts:
            return {}
        with ThreadPoolExecutor(min(READ_THREADS, len(starts))) as pool:
            folders = list(pool.map(lambda b: self.store.list_folder(paths.bucket_prefix(self.job, b)), starts))
        return {stat.key: stat.mtime for folder in folders for stat in folder.objects}

    def flat_listing(self) -> dict[str, float]:
        """Returns each object directly in journal/ (the flat v1 layout) with its store time."""
        return {stat.key: stat.mtime for stat in self.store.list_folder(paths.journal_prefix(self.job)).objects}

    def read(self, keys: Iterable[str]) -> tuple[list[Event], list[tuple[str, str]]]:
        """Returns the events under `keys`, and (key, reason) for objects that are not events, or are
        misplaced (in a bucket more than SKEW_S from their store time; the reason starts with
        MISPLACED, and the ledger ignores them: a bounded reader may never list such a bucket, so
        no reader may count them, not even as bad events)."""
        keys = list(keys)

        def load(key: str):
            data, stat = self.store.get_with_stat(key)  # the store's time of the write orders events
            bucket = paths.bucket_of_key(self.job, key)
            if bucket is not None and not well_placed(bucket, stat.mtime):
                return None, (key, misplaced_reason(bucket, stat.mtime))
            try:
                event = Event.from_bytes(data, stat.mtime)
            except (ValueError, UnicodeDecodeError) as e:
                return None, (key, f"malformed event: {e}")
            if event.id != paths.event_id_of(key):
                return None, (key, f"event id {event.id!r} does not match its key")
            return event, None

        if not keys:
            return [], []
        with ThreadPoolExecutor(min(READ_THREADS, max(1, len(keys)))) as pool:
            results = list(pool.map(load, keys))
        events = [e for e, _ in results if e is not None]
        bad = [b for _, b in results if b is not None]
        return events, bad

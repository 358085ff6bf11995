"""The worker: claims chunks through the journal, trains them, checkpoints to the store, hands on.

Protocol (DESIGN §5). A worker writes `claim(chunk, generation)`, waits a settle interval, syncs,
and owns the chunk only if its claim is the earliest for that generation. While training it
heartbeats, re-syncing each time, and stops if an earlier claim has surfaced or its lease was
declared expired. A silent owner's chunk is freed by an `expire` event that the fold accepts only
if, in the store's own time, the owner had been silent for the lease. Checkpoints go to keys of
their own per attempt and step, uploaded and verified by md5 before a `checkpoint` event points
at them. At the deadline (or on a signal) the worker writes `yield` with the exact step reached;
at the chunk's end it writes `done`, which readies the next chunk of the run.

`Worker.loop()` does one unit of work and returns what happened, so tests drive it step by step;
`Worker.run()` loops until the job is finished, the session ends or it is asked to stop.

Threads: while a chunk trains, its heartbeats come from a thread of their own (`_Heartbeat`), so a
long checkpoint upload or validation never starves the lease; the training thread only reads the
flag that thread sets when the chunk was lost. Both threads share the ledger (one SQLite
connection) and the journal, so every use of either goes through the worker's lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import statistics
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: one worker per cache folder
    fcntl = None

from shardrun import paths
from shardrun.clock import Clock, SystemClock, wait_on
from shardrun.config.job import JobConfig, init_run_of
from shardrun.errors import ShardrunError
from shardrun.journal import Event, Journal
from shardrun.ledger.db import Ledger
from shardrun.session import Session
from shardrun.plan.shards import Manifest
from shardrun.rounds import RoundError, Rounds
from shardrun.errors import IntegrityError, NotFound, StoreError
from shardrun.storage.account import Account
from shardrun.storage.base import Store
from shardrun.storage.registry import open_store
from shardrun.storage.base import digest_file

log = logging.getLogger("shardrun.worker")

DEFAULT_HEARTBEAT_S = 120.0  # heartbeats every 2 min, or a third of the lease when that is shorter
MIN_HEARTBEAT_S = 0.2  # the heartbeat thread never beats more often (heartbeat_seconds=0: tests)


class WorkerError(ShardrunError):
    """The worker cannot go on (no plan, unknown account, unusable store)."""


@dataclass
class WorkerSettings:
    settle_seconds: float = 10.0  # between writing a claim and trusting the listing
    # None: min(2 min, a third of the plan's lease); more than a third of the lease is refused.
    heartbeat_seconds: float | None = None
    # None: adaptive (Worker.checkpoint_interval): checkpointing takes at most `checkpoint_share` of
    # the session, never more often than every `checkpoint_floor_seconds` (also the first interval,
    # before any checkpoint was measured). A SIGKILL loses the interval plus a checkpoint's cost:
    # at most 2 min where a checkpoint costs up to 2.35 s.
    # A number: a checkpoint every that many seconds (--checkpoint-minutes).
    checkpoint_seconds: float | None = None
    checkpoint_share: float = 0.02
    checkpoint_floor_seconds: float = 60.0
    checkpoint_steps: int | None = None
    poll_seconds: float = 30.0  # when every ready chunk is taken, look again after this
    # ... or after this when a collaborative round this worker trained in waits for the others:
    # the next round opens when the last change is in, and a replica that waits a whole poll
    # for it loses that time every round.
    round_poll_seconds: float = 5.0
    min_upload_margin_s: float = 30.0  # kept back before the deadline for the last upload, at least
    deterministic: bool = True  # TensorFlow op determinism: exact resume, some speed on a GPU
    # Validation at each checkpoint: PSNR/SSIM against bicubic on this many images drawn evenly
    # from the job's images (0: none), each centre-cropped to at most this many pixels a side so
    # that it costs a fraction of a second.
    validation_images: int = 4
    validation_crop: int = 128
    progress_seconds: float = 2.0  # how often training tells the live display (on_update)
    # The ledger snapshot on the home store (what a new worker and `status` start from) is
    # published by some worker whenever it is this many minutes of store time old (0: never).
    snapshot_minutes: float = 30.0


@dataclass
class WorkerJob:
    """What a worker needs of a job: its name, its stores and where the local ledger lives."""

    name: str
    home: Store
    stores: dict[str, Store]  # account name -> store (filled from the plan when started from a URL)
    ledger_path: Path
    cache_dir: Path

    @classmethod
    def from_config(cls, job: JobConfig, account: str | None = None) -> "WorkerJob":
        """`account`: the person running the worker; an account with no credentials on this
        machine (a Drive token file) is reached with theirs."""
        own = job.store_account(job.account(account)) if account in {a.name for a in job.accounts} else None
        stores = {a.name: job.open_store(a, fallback=own) for a in job.accounts}
        root = job.ledger_path.parent
        return cls(job.name, stores[job.home.name], stores, job.ledger_path, root / "cache")

    @classmethod
    def from_home_url(cls, url: str, cache_root: Path | None = None, account: str | None = None) -> "WorkerJob":
        """Returns the job at `<home store URL>/<job name>`, for a notebook that has only the store.

        The home store is opened as `account` (the person running the worker): with no job file,
        credentials come from the environment (docs/storage.md).
        """
        store_url, _, name = url.rstrip("/").rpartition("/")
        if not store_url or "://" not in store_url or not name:
            raise WorkerError(f"{url!r} is neither a job file nor a job URL like local:///srv/alice/JOBNAME")
        root = (cache_root or Path.home() / ".cache" / "shardrun") / name
        home = open_store(Account(account, store_url, job=name))
        return cls(name, home, {}, root / "ledger.db", root / "cache")


@dataclass
class ChunkOutcome:
    run: str
    chunk: int
    generation: int
    start_step: int  # where training started (after restoring)
    step: int  # where it stopped
    # "done", "yield" (deadline or stop), "lost" (another worker owns the chunk), "failed" (no
    # usable checkpoint to resume it from: a `fail` event says why, and this worker moves on)
    result: str
    train_seconds: float
    notices: list[str] = field(default_factory=list)
    round: int | None = None  # a collaborative run's unit: its round and replica
    replica: int | None = None

    @property
    def what(self) -> str:
        """Returns what was trained, in words: "run chunk 3", or "run round 1 replica 0"."""
        if self.round is None:
            return f"{self.run} chunk {self.chunk}"
        return f"{self.run} round {self.round} replica {self.replica}"


@dataclass(frozen=True)
class WorkerProgress:
    """What a live display shows: what the worker is doing, the chunk in hand and how it goes,
    and the session's time left. Numbers a worker does not know yet are None."""

    worker: str
    activity: str  # "starting", "training", "checkpoint", "waiting" (every ready chunk is taken)
    run: str | None = None
    chunk: int | None = None
    step: int | None = None
    end_step: int | None = None  # the step the chunk ends at
    loss: float | None = None  # mean training loss since the previous report
    patches_per_second: float | None = None
    psnr: float | None = None  # the run's latest validation here, and bicubic's on the same crops
    bicubic_psnr: float | None = None
    validation_step: int | None = None
    next_checkpoint_s: float | None = None  # seconds until the next periodic checkpoint is due
    seconds_left: float | None = None  # before the session's deadline (None: no deadline)


@contextlib.contextmanager
def _exclusive(path: Path):
    """Holds an exclusive lock on `path`.lock: workers on one machine share one cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def fetch_verified(store: Store, key: str, dest: Path, md5: str) -> None:
    """Makes `dest` a verified copy of the object: kept if its md5 matches, else fetched again."""
    with _exclusive(dest):
        if dest.exists() and digest_file(dest).md5 == md5:
            return
        dest.unlink(missing_ok=True)
        try:
            store.download(key, dest, expected_md5=md5)
        except IntegrityError:
            store.download(key, dest, expected_md5=md5)  # a stale partial file: once more, from scratch


def worker_identity(account: str) -> str:
    """Returns a worker id unique to this process: two workers never share one, even if started alike."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:12] or "host"
    return f"{account}-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _Heartbeat:
    """Heartbeats of the chunk a worker trains, written from a thread of their own.

    The training thread reports its progress (`report`, cheap: no I/O); every `interval` on the
    worker's clock the thread writes a heartbeat with the latest step, the mean loss since the
    previous heartbeat and the speed, syncs, and sets `lost` when the worker no longer owns the
    chunk. It waits with `clock.wait`, so on a FakeClock it beats only when the test advances the
    clock; `beat()` is one heartbeat, callable directly. An error (the store gone) stops the thread
    and is kept in `error` for the training thread to raise.
    """

    def __init__(self, worker: "Worker", chunk: dict, interval: float, batch_size: int, step: int):
        self.worker, self.chunk, self.batch_size = worker, chunk, batch_size
        self.interval = max(interval, MIN_HEARTBEAT_S)
        self.lost = threading.Event()
        self.error: BaseException | None = None
        self.beats = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._step = self._beat_step = self._loss_step = step
        self._learning_rate: float | None = None
        self._loss_total, self._loss_steps = 0.0, 0
        self._loss: float | None = None  # the last heartbeat's figures, repeated while no step is
        self._pps: float | None = None   # taken (an upload, a validation): status shows no gap
        self._beat_time = worker.clock.monotonic()

    def report(self, progress) -> None:
        """Takes the trainer's progress (a Progress: its loss is the mean since its previous report)."""
        with self._lock:
            steps = progress.step - self._loss_step
            if progress.loss is not None and steps > 0:
                self._loss_total += progress.loss * steps
                self._loss_steps += steps
            self._loss_step = progress.step
            self._step = max(self._step, progress.step)
            self._learning_rate = progress.learning_rate

    def reached(self, step: int, learning_rate: float | None) -> None:
        """Takes the step a checkpoint was written at (the trainer reports no progress while it uploads)."""
        with self._lock:
            if step > self._step:
                self._step, self._learning_rate = step, learning_rate

    def beat(self) -> None:
        """Writes one heartbeat, syncs, and sets `lost` if another worker now owns the chunk."""
        w, c = self.worker, self.chunk
        now = w.clock.monotonic()
        with self._lock:
            step, seconds = self._step, now - self._beat_time
            if self._loss_steps:
                self._loss = self._loss_total / self._loss_steps
            if seconds > 0 and step > self._beat_step:
                self._pps = (step - self._beat_step) * self.batch_size / seconds
            loss, pps, learning_rate = self._loss, self._pps, self._learning_rate
            self._loss_total, self._loss_steps, self._beat_time, self._beat_step = 0.0, 0, now, step
        w._write("heartbeat", c["run"], c["idx"], c["generation"], step=step, loss=loss, learning_rate=learning_rate,
                 **w._rates(pps, self.batch_size), **w.identity())
        w.sync()
        self.beats += 1
        if not w._owns(c):
            self.lost.set()

    def _run(self) -> None:
        clock = self.worker.clock
        due = clock.monotonic() + self.interval
        try:
            while not wait_on(clock, self._stop, due - clock.monotonic()):
                self.beat()
                if self.lost.is_set():
                    return
                # The next one is due an interval after this one was; if that time has passed
                # already (a slow write), at once, and then an interval on.
                now = clock.monotonic()
                due = due + self.interval if due + self.interval > now else now
        except BaseException as e:  # noqa: BLE001 - raised again in the training thread
            log.warning("the heartbeat failed: %s", e)
            self.error = e

    def __enter__(self) -> "_Heartbeat":
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.worker.id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Worker:
    def __init__(self, job: WorkerJob, account: str, session: Session, *, settings: WorkerSettings | None = None,
                 clock: Clock | None = None, on_outcome: Callable[[ChunkOutcome], None] | None = None,
                 on_progress: Callable[[str, int, int, int, float | None], None] | None = None,
                 on_update: Callable[[WorkerProgress], None] | None = None):
        self.job = job
        self.account = account
        self.session = session
        self.settings = settings or WorkerSettings()
        self.clock = clock or SystemClock()
        self.id = worker_identity(account)
        self.journal = Journal(job.home, job.name, self.clock)
        self.ledger = Ledger.from_snapshot(job.home, job.name, job.ledger_path)
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.on_progress = on_progress or (lambda run, chunk, step, end, loss: None)
        self.on_update = on_update or (lambda progress: None)  # a live display's; see _tell
        self._shown: dict = {}  # what _tell last said, so each report changes only what it knows
        self._last_checkpoint_at: float | None = None
        self.outcomes: list[ChunkOutcome] = []
        self._stop = False
        self._trainer = None
        self._server_offset: float | None = None  # store time minus this machine's time
        self._verified_shards: set[str] = set()
        self._sources: dict[tuple[str, ...] | None, object] = {}  # shard ids (None: all) -> image source
        self._holds: dict[tuple[str, int], str] = {}  # (run, replica) -> the final checkpoint its trainer holds
        self._later: dict[tuple[str, int], float] = {}  # units handed back for a while (this clock's time)
        self.rounds = Rounds(self)
        self._trainers: dict[str, object] = {}  # per run: reusing one keeps its compiled step
        self._upload_bps: float | None = None
        self._checkpoint_bytes = 0
        self._device: str | None = None
        self._validation: list | None = None
        # The ledger's connection and the journal are shared with the heartbeat thread.
        self._lock = threading.RLock()
        self._failed: dict[tuple[str, int], str] = {}  # chunks this worker could not resume, and why
        self.checkpoint_costs: list[float] = []  # seconds each checkpoint held training up (this session)
        self._heartbeat: _Heartbeat | None = None
        if self.settings.deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        self.sync()
        plan = self.ledger.plan()
        if plan is None:
            raise WorkerError(f"job {job.name!r} has no plan on {job.home.url}: run `shardrun plan` first")
        if account not in {a["name"] for a in self.ledger.accounts()}:
            raise WorkerError(f"--account {account!r} is not an account of job {job.name!r}; it has: "
                              + ", ".join(a["name"] for a in self.ledger.accounts()))
        self.heartbeat_interval()  # an interval the lease cannot tolerate is refused before any claim
        if not job.stores:
            recorded = [Account(a["name"], a["store"], a["quota_bytes"], job.name) for a in self.ledger.accounts()]
            # Accounts with no credentials here are reached as ours.
            own = next(a for a in recorded if a.name == account)
            job.stores.update({a.name: open_store(replace(a, fallback=own)) for a in recorded})

    # -- time and the journal --

    def sync(self) -> None:
        with self._lock:
            self.ledger.sync(self.journal)
            self._forget_if_replanned()
            self._publish_snapshot()

    def _publish_snapshot(self) -> None:
        """Publishes the ledger snapshot when the store's is older than snapshot_minutes (store
        time: the snapshot's own against the newest event). Looked at once per interval;
        best-effort: a failure is logged and training goes on."""
        interval = self.settings.snapshot_minutes * 60
        seen = self.ledger.seen_time()
        last = getattr(self, "_snapshot_looked", None)
        if interval <= 0 or seen is None or (last is not None and seen - last < interval):
            return
        self._snapshot_looked = seen
        try:
            if self.ledger.publish_if_stale(self.job.home, self.job.name, interval):
                log.info("published the ledger snapshot (%s events folded)", self.ledger.event_count())
        except Exception as e:  # noqa: BLE001 - a snapshot only spares new readers time
            log.warning("the ledger snapshot was not published (%s: %s); training goes on", type(e).__name__, e)

    def _forget_if_replanned(self) -> None:
        # A new plan may change the data, the shards or a run's settings, so what was built for
        # the old one is dropped and built again on use.
        plan = self.ledger.plan()
        plan_id = plan["id"] if plan else None
        if getattr(self, "_plan_id", plan_id) != plan_id:
            log.info("the job was planned again (%s); dropping cached data and trainers", plan_id)
            self._sources, self._trainers, self._validation, self._holds = {}, {}, None, {}
            self._verified_shards = set()
            self.rounds.forget()
        self._plan_id = plan_id

    def _write(self, kind: str, run: str | None = None, chunk: int | None = None, generation: int | None = None,
               **payload) -> None:
        with self._lock:
            local = self.clock.now()
            event = self.journal.append(kind, self.id, run, chunk, generation, payload)
            self._server_offset = event.server_time - local
            # Folded at once: a worker knows its own events even while the store's listings hide
            # them (Drive's lag), so it never loses its own claim, nor holds a chunk it forgot.
            # Folded as every reader reads it (from its bytes: JSON, keys sorted), so this ledger
            # stays row for row the same as any other reader's.
            self.ledger.add_events([Event.from_bytes(event.to_bytes(), event.server_time)])

    def identity(self) -> dict[str, str]:
        """Returns what every event of this worker says about where it runs (status shows it)."""
        if self._device is None:
            from shardrun.train.bench import device_description

            self._device = device_description()
        return {"account": self.account, "platform": self.session.platform, "device": self._device}

    def server_now(self) -> float | None:
        """Returns the store's time now, estimated from our last write (never another machine's clock)."""
        return None if self._server_offset is None else self.clock.now() + self._server_offset

    def heartbeat_interval(self) -> float:
        """Returns the seconds between heartbeats: `heartbeat_seconds`, or by default min(2 min, a
        third of the plan's lease). Raises WorkerError for more than a third of the lease: two
        late heartbeats would then lose the chunk."""
        with self._lock:
            lease = self.ledger.plan()["lease_seconds"]
        asked = self.settings.heartbeat_seconds
        if asked is None:
            return min(DEFAULT_HEARTBEAT_S, lease / 3)
        if asked > lease / 3 * (1 + 1e-9):
            raise WorkerError(f"a heartbeat every {asked / 60:g} min is more than a third of the plan's lease "
                              f"({lease / 60:g} min, lease_minutes in the job file): use --heartbeat-minutes "
                              f"{lease / 180:g} or less")
        return asked

    def checkpoint_interval(self) -> float:
        """Returns the seconds between periodic checkpoints: `checkpoint_seconds` where set; else
        max(cost / checkpoint_share, checkpoint_floor_seconds), where cost is the median time a
        recent checkpoint of this session held training up (writing, upload, validation, event),
        so checkpointing takes at most the share of the session; before any was measured, the
        floor. What a SIGKILL loses is the interval plus that cost (until the checkpoint is
        durable): within 2 min for a cost up to 120 s × share / (1 + share), 2.35 s."""
        s = self.settings
        if s.checkpoint_seconds is not None:
            return s.checkpoint_seconds
        if not self.checkpoint_costs:
            return s.checkpoint_floor_seconds
        cost = statistics.median(self.checkpoint_costs[-9:])
        return max(cost / s.checkpoint_share, s.checkpoint_floor_seconds)

    def request_stop(self) -> None:
        """Asks the worker to checkpoint, yield and stop (a signal handler calls this)."""
        self._stop = True
        if self._trainer is not None:
            self._trainer.request_stop()

    # -- one unit of work --

    def loop(self) -> str:
        """Does one unit of work; returns "trained", "lost", "failed", "idle", "finished" or "stopped"."""
        if self._stop:
            return "stopped"
        self.sync()
        chunks = self.ledger.chunks()
        if self.ledger.finished():
            return "finished"
        self.heartbeat_interval()  # a new plan may have shortened the lease
        self._expire_stale(chunks)
        if self.rounds.due(self._round_trainer):
            return "trained"  # a round closed or stepped: look again at what is ready
        # A chunk this worker could not resume is left to others (their copies of the store may
        # serve them better); it waits in status with the reason.
        now = self.clock.now()
        ready = [c for c in self.ledger.chunks() if c["state"] == "ready" and (c["run"], c["idx"]) not in self._failed
                 and self._later.get((c["run"], c["idx"]), now) <= now]
        # A run that starts from another run's network (init = "run:NAME") waits for that run's end.
        waiting = {run for run in {c["run"] for c in ready} if self.ledger.waits_for(run)}
        ready = [c for c in ready if c["run"] not in waiting]
        if not ready:
            return "idle"
        # A worker keeps to the replicas it trains (their shards, trainer and optimiser state are
        # here); otherwise different workers prefer different runs and replicas, so simultaneous
        # claims rarely collide.
        ready.sort(key=lambda c: ((c["run"], c["replica"]) not in self._trainers,
                                  hashlib.sha256(f"{self.id}/{c['run']}/{c['replica']}".encode()).hexdigest()))
        chunk = ready[0]
        # Shards are fetched before claiming: a claim's lease runs from the claim, and downloading
        # gigabytes from Drive can take longer than the lease.
        self._source_for(chunk)
        self._write("claim", chunk["run"], chunk["idx"], chunk["generation"], **self.identity())
        self.clock.sleep(self.settings.settle_seconds)
        self.sync()
        if not self._owns(chunk):
            log.info("lost the claim on %s chunk %d to an earlier one", chunk["run"], chunk["idx"])
            return "lost"
        outcome = self._train(chunk)
        if chunk["round"] is not None:
            outcome = replace(outcome, round=chunk["round"], replica=chunk["replica"])
        self.outcomes.append(outcome)
        self.on_outcome(outcome)
        return {"lost": "lost", "failed": "failed"}.get(outcome.result, "trained")

    def run(self, max_chunks: int | None = None) -> str:
        """Works until the job is finished, the session ends, `max_chunks` are trained or a stop;
        then says in the journal that it left, and why, so status shows it ended at once."""
        reason = self._work(max_chunks)
        try:
            self._write("leave", reason=reason)
        except StoreError as e:  # the journal is unreachable: status sees it ended a lease later
            log.warning("could not record that this worker left: %s", e)
        return reason

    def _work(self, max_chunks: int | None) -> str:
        while True:
            if self._stop:
                return "stopped"
            left = self.session.seconds_left(self.clock)
            if left is not None and left <= self._upload_margin() + self.settings.settle_seconds:
                return "deadline"
            if max_chunks is not None and len([o for o in self.outcomes
                                               if o.result not in ("lost", "failed")]) >= max_chunks:
                return "max-chunks"
            result = self.loop()
            if result in ("finished", "stopped"):
                return result
            if result == "idle":
                self._tell(activity="waiting", run=None, chunk=None, step=None, end_step=None)
                self.clock.sleep(min(self.settings.poll_seconds, self.settings.round_poll_seconds)
                                 if self._awaits_round() else self.settings.poll_seconds)

    def _done_accepted(self, chunk: dict, key: str | None) -> bool:
        with self._lock:
            now = self.ledger.chunk(chunk["run"], chunk["idx"])
        return now is not None and now["state"] == "done" and key is not None and now["checkpoint_key"] == key

    def _awaits_round(self) -> bool:
        """True when a collaborative round is open or closed (its outer step to come) in a run this
        worker trains: the next round's units are ready soon."""
        trained = {key[0] for key in self._trainers if isinstance(key, tuple)}
        with self._lock:
            return any(self.ledger.db.execute("SELECT 1 FROM rounds WHERE run = ? AND state IN ('open', 'closed')",
                                              [run]).fetchone() for run in trained)

    def _owns(self, chunk: dict) -> bool:
        with self._lock:
            now = self.ledger.chunk(chunk["run"], chunk["idx"])
        return (now is not None and now["state"] == "running" and now["owner"] == self.id
                and now["generation"] == chunk["generation"])

    def _expire_stale(self, chunks: list[dict]) -> None:
        lease = self.ledger.plan()["lease_seconds"]
        server_now = self.server_now()
        for c in chunks:
            if c["state"] == "running" and c["owner"] == self.id:
                # Between chunks this worker trains nothing: a chunk the ledger says it owns (a
                # claim it gave up on that surfaced later) is handed back now, not a lease later.
                self._write("yield", c["run"], c["idx"], c["generation"], reason="not trained: handed back",
                            **self.identity())
                continue
            if c["state"] != "running":
                continue
            # Without an estimate of the store's time yet, write the expiry anyway: the fold
            # accepts it only if the store's time of this very event proves the lease over.
            if server_now is None or server_now - c["heartbeat_time"] >= lease:
                self._write("expire", c["run"], c["idx"], c["generation"])
                server_now = self.server_now()
        self.sync()

    # -- training a chunk --

    def _train(self, chunk: dict) -> ChunkOutcome:
        run, idx, generation = chunk["run"], chunk["idx"], chunk["generation"]
        unit = chunk["round"] is not None  # a collaborative run's (round, replica)
        config = self._train_config(run)
        notices: list[str] = []
        trainer_key = (run, chunk["replica"]) if unit else run
        def fresh_trainer():
            self._trainers[trainer_key] = self._new_trainer(config, chunk)
            return self._trainers[trainer_key]

        # Reusing a run's trainer keeps its compiled step; its state is replaced by the restored
        # checkpoint, or by a fresh trainer's initial weights when there is none.
        trainer = self._trainers.get(trainer_key) or fresh_trainer()
        expected_total = self.ledger.run(run)["steps_total"]
        reason = None
        unit_end = None  # a unit handed in again: the final checkpoint it starts (and ends) on
        if unit:
            try:
                trainer, restore_notices, unit_end = self._start_unit(trainer, fresh_trainer, run, chunk)
            except RoundError as e:
                if e.missing:  # the round's weights not listed yet (Drive's lag): hand it back, try later
                    self._write("yield", run, idx, generation, reason=str(e), **self.identity())
                    self._later[(run, idx)] = self.clock.now() + self.settings.poll_seconds
                    self.sync()
                    return ChunkOutcome(run, idx, generation, chunk["start_step"], chunk["start_step"], "yield",
                                        0.0, notices + [str(e)])
                reason, restore_notices = str(e), []
            notices += restore_notices
        else:
            if trainer.total_steps != expected_total:
                raise WorkerError(f"run {run!r}: the plan counts {expected_total} steps but the data gives "
                                  f"{trainer.total_steps}; was the plan made with other shards?")
            restored, restore_notices = self._restore(trainer, run, chunk)
            notices += restore_notices
            if not restored and chunk["start_step"] > 0:
                # Training again from step 0 of a later chunk would silently redo the run's earlier
                # chunks: fail the chunk instead, with the reason, and move on.
                reason = (f"no checkpoint of run {run} at or before step "
                          f"{max(chunk['step_reached'], chunk['start_step'])} can be restored"
                          + (f" ({len(restore_notices)} tried; newest: {restore_notices[0]})"
                             if restore_notices else " (none accepted)"))
            elif not restored and trainer.step != 0:
                trainer = fresh_trainer()
        if reason is not None:
            reason = " ".join(reason.split())
            self._write("fail", run, idx, generation, reason=reason, **self.identity())
            self._failed[(run, idx)] = reason
            notices.append(f"{run} chunk {idx} failed: {reason}")
            log.warning(notices[-1])
            self.sync()
            return ChunkOutcome(run, idx, generation, chunk["start_step"], chunk["start_step"], "failed", 0.0, notices)
        start_step = trainer.step
        self._trainer = trainer
        self._start_display(run, idx, start_step, chunk["end_step"])
        lost = False
        final: dict = {}
        beat = _Heartbeat(self, chunk, self.heartbeat_interval(), config.batch_size, start_step)

        def on_checkpoint(info) -> None:
            if lost:
                return
            started = self.clock.monotonic()
            beat.reached(info.step, trainer.learning_rate_at(info.step))
            self._tell(activity="checkpoint", step=info.step)
            key = paths.checkpoint_key(self.job.name, run, idx, generation, self.id, info.step)
            stat = self._upload(key, info.path)  # heartbeats go on meanwhile, from their thread
            figures = {"key": key, "md5": stat.md5, "step": info.step, "loss": info.loss,
                       "learning_rate": trainer.learning_rate_at(info.step),
                       **self._rates(info.patches_per_second, config.batch_size), **self.identity()}
            # A replica's own weights are never the product: the round's outer step validates the
            # global network instead.
            validation = None if unit else self._validate(trainer, run, idx, generation, info.step)
            if validation is not None:
                figures["validation"] = validation
            if info.final:
                final.update(figures)
            else:
                self._write("checkpoint", run, idx, generation, **figures)
            # What this checkpoint cost the training: the adaptive interval follows it.
            self.checkpoint_costs.append((info.seconds or 0.0) + self.clock.monotonic() - started)
            self._checkpointed(info.step, validation)
            if not info.final:
                self._tidy()

        def on_heartbeat(progress) -> None:
            # The training thread's side of the heartbeat: hand the progress to the heartbeat
            # thread, and stop if that thread found the chunk lost (or could not write).
            nonlocal lost
            beat.report(progress)
            self.on_progress(run, idx, progress.step, chunk["end_step"], progress.loss)
            if lost:
                return
            if beat.lost.is_set():
                lost = True
                trainer.request_stop()
                notices.append(f"{run} chunk {idx}: another worker owns it now; stopping without writing")
            elif beat.error is not None:
                trainer.request_stop()

        if self._stop:
            trainer.request_stop()
        started = self.clock.monotonic()
        self._heartbeat = beat
        try:
            with beat:
                result = trainer.train(
                    until_step=chunk["end_step"], deadline=self._deadline(), reserve_s=self._upload_margin(),
                    checkpoint_every_steps=self.settings.checkpoint_steps,
                    checkpoint_every_s=self.checkpoint_interval,
                    heartbeat_every_s=min(self.heartbeat_interval(), self.settings.progress_seconds),
                    on_checkpoint=on_checkpoint, on_heartbeat=on_heartbeat,
                    on_report=lambda p: self._tell(activity="training", step=p.step, loss=p.loss,
                                                   patches_per_second=p.patches_per_second),
                    report_every_s=self.settings.progress_seconds)
        finally:
            self._trainer = None
            self._heartbeat = None
        if beat.error is not None:
            raise beat.error
        train_seconds = self.clock.monotonic() - started
        self.sync()
        if lost or beat.lost.is_set() or not self._owns(chunk):
            if not lost:
                notices.append(f"{run} chunk {idx}: another worker owns it now; stopping without writing")
            return ChunkOutcome(run, idx, generation, start_step, trainer.step, "lost", train_seconds, notices)
        if result.reason == "target":
            if unit and "key" not in final and unit_end is not None:
                final.update(unit_end)  # no step trained: the unit ends on the checkpoint it started from
            refused = None
            if unit:  # the round's change goes up before `done` names it
                try:
                    final["change"] = self.rounds.hand_in(trainer, run, chunk, generation)
                except RoundError as e:  # a replica that diverged: nothing to hand in
                    refused = str(e)
            if refused is None:
                self._write("done", run, idx, generation, **{**self.identity(), **final})
            result_name = "done"
            if refused is not None or not self._done_accepted(chunk, final.get("key")):
                # The fold refused it (it names no final checkpoint, or no change): hand the chunk
                # back with the reason rather than claim it again and again.
                reason = refused or (f"its done at step {trainer.step} was refused by the ledger (no final checkpoint, "
                                     f"or no change made from the round's weights)")
                log.error("%s: %s", run, reason)
                self._write("fail", run, idx, generation, reason=reason, **self.identity())
                self._failed[(run, idx)] = reason
                result_name = "failed"
            elif unit:
                self._holds[(run, chunk["replica"])] = final["key"]
        else:
            self._write("yield", run, idx, generation, reason=f"{result.reason} at step {trainer.step}",
                        **{**self.identity(), **final})
            result_name = "yield"
        self.sync()
        self._tidy()
        self.on_progress(run, idx, trainer.step, chunk["end_step"], result.loss)
        return ChunkOutcome(run, idx, generation, start_step, trainer.step, result_name, train_seconds, notices)

    def _tidy(self) -> None:
        """Deletes the checkpoints that no resume or user can need any more (retention: shardrun.sweep
        and docs/worker.md); never fatal, and judged in the store's time only."""
        if getattr(self, "sweeper", None) is None:
            from shardrun.sweep import Sweeper

            self.sweeper = Sweeper(self.job.home, self.job.name)
        with self._lock:
            self.sweeper.tidy(self.ledger)

    @staticmethod
    def _rates(patches_per_second: float | None, batch_size: int) -> dict[str, float | None]:
        return {"patches_per_second": patches_per_second,
                "steps_per_second": None if patches_per_second is None else patches_per_second / batch_size}

    def _validation_images(self) -> tuple[str, list[str], list]:
        """Returns the validation set's name, its images' names and crops (plan/validation.py).

        A plan made before validation sets existed names none: then a few training images are
        drawn evenly, each cut where it has most texture, and the set says it is training images.
        """
        if self._validation is None:
            from shardrun.plan.validation import CROP, read_validation_file

            with self._lock:
                recorded = json.loads(self.ledger.plan().get("payload") or "{}").get("validation")
            if recorded:
                names, crops = read_validation_file(self.job.home.get_bytes(recorded["key"], recorded["md5"]))
                self._validation = (recorded["name"], names, crops)
            else:
                from shardrun.train.data import decode_rgb
                from shardrun.train.metrics import texture_crop

                source, count = self._image_source(), self.settings.validation_images
                chosen = sorted({(2 * i + 1) * len(source) // (2 * count) for i in range(count)}) if count > 0 else []
                names, crops = [], []
                for index in chosen:
                    rgb = decode_rgb(source.read(index), source.name(index))
                    top, left = texture_crop(rgb, min(CROP, self.settings.validation_crop))
                    crops.append(rgb[top:top + CROP, left:left + CROP])
                    names.append(source.name(index))
                self._validation = ("training images (the plan holds none out)", names, crops)
        return self._validation

    def _validate(self, trainer, run: str, chunk: int | None, generation: int, step: int,
                  pictures: bool = True) -> dict | None:
        """Returns the validation's figures for the checkpoint event, or None.

        PSNR is pooled (metrics.pooled_psnr: of the mean MSE, so no image dominates), SSIM the mean;
        per-image scores (PSNR with MSE floored) go along, and a PNG of bicubic, the network and
        the original for the first crops is uploaded beside the checkpoint. Inference only (no
        training step, no random draw), so training continues exactly as it would have without it.
        Validation is advice: a failure is logged, never fatal.
        """
        if self.settings.validation_images <= 0:
            return None
        try:
            from shardrun.plan.validation import pictures_png
            from shardrun.train.metrics import floored_psnr, pooled_psnr

            name, names, images = self._validation_images()
            if not images:
                return None
            triples: list = []
            result = trainer.evaluate(images, names, pictures=triples)
            scores = result.images
            figures = {"psnr": pooled_psnr([s.mse for s in scores]), "ssim": result.ssim,
                       "bicubic_psnr": pooled_psnr([s.bicubic_mse for s in scores]),
                       "bicubic_ssim": result.bicubic_ssim, "images": len(images), "set": name,
                       "rule": "pooled-mse",
                       "scores": [[s.name, floored_psnr(s.mse), s.ssim, floored_psnr(s.bicubic_mse), s.bicubic_ssim]
                                  for s in scores]}
            if not pictures:
                return figures
            png, places = pictures_png(triples)
            key = paths.validation_pictures_key(self.job.name, run, chunk, generation, self.id, step)
            stat = self.job.home.put_bytes(key, png)
            figures["pictures"] = {"key": key, "md5": stat.md5, "crops": [
                {**place, "name": s.name, "psnr": floored_psnr(s.mse), "bicubic_psnr": floored_psnr(s.bicubic_mse)}
                for place, s in zip(places, scores)]}
            return figures
        except Exception as e:  # noqa: BLE001 - a broken metric must not stop the training it reports on
            log.warning("validation failed, checkpoint reported without it: %s", e)
            return None

    def _train_config(self, run: str):
        """Returns the run's training settings, read from what the plan recorded in the ledger;
        the files it trains with (its own network, init weights) are fetched from the home store
        into the cache, md5-verified, and the trainer checks their sha256 against the plan's."""
        from shardrun.train.checkpoint import CHECKPOINT_SUFFIX, TrainingError
        from shardrun.train.trainer import TrainConfig

        settings = json.loads(self.ledger.run(run)["config"])
        local = {}
        for kind, f in (settings.get("files") or {}).items():
            dest = self.job.cache_dir / "files" / f["key"].rsplit("/", 1)[-1]
            fetch_verified(self.job.home, f["key"], dest, f["md5"])
            local[kind] = str(dest)
        source = init_run_of(settings.get("init"))
        if source is not None:
            with self._lock:
                final = self.ledger.final_network(source)
            if final is None:
                raise TrainingError(f"run {run!r} starts from run {source!r}'s final network, which is not trained yet")
            dest = self.job.cache_dir / "files" / f"{source}-{final['md5']}{CHECKPOINT_SUFFIX}"
            fetch_verified(self.job.home, final["key"], dest, final["md5"])
            local["init"] = str(dest)
        return TrainConfig.from_run(settings, local)

    def _deadline(self) -> float | None:
        return self.session.deadline

    def _upload_margin(self) -> float:
        """Returns the time to keep for the final checkpoint upload, from the measured upload speed."""
        margin = self.settings.min_upload_margin_s
        if self._upload_bps and self._checkpoint_bytes:
            margin = max(margin, 3 * self._checkpoint_bytes / self._upload_bps + 5)
        return margin

    def _upload(self, key: str, path: Path):
        started = self.clock.monotonic()
        stat = self.job.home.put_file(key, path)  # verifies the stored md5
        seconds = max(self.clock.monotonic() - started, 1e-6)
        self._checkpoint_bytes = stat.size
        self._upload_bps = stat.size / seconds
        return stat

    # -- data and checkpoints from the store --

    def _source_for(self, chunk: dict):
        """Returns the images a chunk trains on: all of them, or a collaborative unit's part only
        (its worker downloads only that part's shards)."""
        if chunk["replica"] is None:
            return self._image_source()
        with self._lock:
            part = self.ledger.collaborative(chunk["run"])["parts"][chunk["replica"]]
        return self._image_source(tuple(part["shards"]))

    def _image_source(self, shard_ids: tuple[str, ...] | None = None):
        """Returns the training images of the shards `shard_ids` (default: all), fetched into the
        cache and indexed by path."""
        from shardrun.train.data import ShardImageSource

        if shard_ids in self._sources:
            return self._sources[shard_ids]
        with self._lock:
            plan, shards = self.ledger.plan(), self.ledger.shards()
        manifest = Manifest.from_json_bytes(self.job.home.get_bytes(plan["manifest_key"], plan["manifest_md5"]))
        wanted = set(shard_ids) if shard_ids is not None else {s["id"] for s in shards}
        shard_dir = self.job.cache_dir / "shards"
        for shard in shards:
            if shard["id"] in wanted:
                self._fetch_shard(shard, shard_dir / f"{shard['id']}.tar")
        images = manifest.training_images
        if shard_ids is not None:
            images = [image for image in images if image.shard in wanted]
        self._sources[shard_ids] = ShardImageSource(images, shard_dir)
        return self._sources[shard_ids]

    def _round_trainer(self, run: str):
        """Returns a trainer of `run` for a round's outer step (validation, the global checkpoint):
        one this worker has, else one built on replica 0's part."""
        for key, trainer in self._trainers.items():
            if isinstance(key, tuple) and key[0] == run:
                return trainer
        unit = next(c for c in self.ledger.chunks(run) if c["replica"] == 0)
        self._trainers[(run, 0)] = self._new_trainer(self._train_config(run), unit)
        return self._trainers[(run, 0)]

    def _new_trainer(self, config, chunk: dict):
        """Returns a new trainer of the chunk's run on the images the chunk trains on."""
        from shardrun.train.trainer import Trainer

        return Trainer(config, self._source_for(chunk), self.job.cache_dir / "checkpoints" / self.id / chunk["run"],
                       clock=self.clock, cache_dir=self.job.cache_dir / "decoded")

    def _fetch_shard(self, shard: dict, dest: Path) -> None:
        """Fetches a shard into the cache once per session, verified; a corrupt copy is fetched again."""
        if shard["id"] not in self._verified_shards:
            fetch_verified(self.job.stores[shard["account"]], shard["key"], dest, shard["md5"])
            self._verified_shards.add(shard["id"])

    def _restore(self, trainer, run: str, chunk: dict) -> tuple[bool, list[str]]:
        """Restores the newest usable accepted checkpoint at or before the chunk's resume point.

        Every candidate is tried, newest first, each fetched only when the newer ones failed: one
        that fails its hash or is missing on the store, and one that reads but cannot be resumed
        here (unreadable, another format version, another model or data layout), is skipped with
        a notice. Returns whether one was restored, and the notices.
        """
        resume_at = max(chunk["step_reached"], chunk["start_step"])
        with self._lock:
            candidates = self.ledger.checkpoints(run, up_to_step=resume_at)
        restored, notices = self._restore_from(trainer, candidates)
        if restored:
            return True, notices
        if chunk["start_step"] == 0 and resume_at > 0:
            notices.append(f"{run}: no checkpoint could be restored; training again from step 0")
            log.warning(notices[-1])
        return False, notices

    def _start_unit(self, trainer, fresh_trainer, run: str, chunk: dict) -> tuple[object, list[str], dict | None]:
        """Returns the trainer of a collaborative unit, ready at its resume point: its own newest
        usable checkpoint (a resume mid-round); else the round's global weights at the round's
        first step, with the optimiser state of the replica's last round (or a fresh one). Also
        returns notices, and the checkpoint restored when it is the round's end (a change handed
        in again after a reject), which the unit's `done` names.
        Starting a round over is as exact as resuming it (the unit trains the same steps again),
        as long as that optimiser state is there: without it the replica goes on with a fresh one,
        which is said (a notice), since the run is then no longer exactly reproducible."""
        held = self._holds.pop((run, chunk["replica"]), None)  # the trainer is about to change
        own, earlier = self.rounds.resume_candidates(run, chunk)
        restored, notices = self._restore_from(trainer, own)
        if restored:
            end = ({"key": restored["key"], "md5": restored["md5"], "step": restored["step"]}
                   if restored["step"] == chunk["end_step"] else None)  # handing in again: the round's end is trained
            return trainer, notices, end
        if earlier and held == earlier[0]["key"]:
            # This trainer wrote that checkpoint and trained nothing since: its optimiser state is
            # the checkpoint's (an outer step here sets only its weights and step, which the round
            # sets again below), so it is not downloaded again.
            restored = earlier[0]
        else:
            restored, more = self._restore_from(trainer, earlier)
            notices += more
        if not restored:
            if earlier:
                notices.append(f"{run} replica {chunk['replica']}: its optimiser state of round {chunk['round'] - 1} "
                               f"cannot be restored; round {chunk['round']} goes on with a fresh one (the run is no "
                               f"longer exactly reproducible)")
                log.warning(notices[-1])
            trainer = fresh_trainer()
        self.rounds.begin_round(trainer, run, chunk)
        return trainer, notices, None

    def _restore_from(self, trainer, candidates: list[dict]) -> tuple[dict | None, list[str]]:
        """Restores the first usable of `candidates` (checkpoint rows, newest first); returns it
        (None when none was), and the notices."""
        from shardrun.train.checkpoint import CheckpointError

        notices: list[str] = []
        for ckpt in candidates:
            dest = self.job.cache_dir / "restore" / ckpt["key"].replace("/", "_")
            try:
                fetch_verified(self.job.home, ckpt["key"], dest, ckpt["md5"])
                result = trainer.restore([dest])
            except (IntegrityError, NotFound, CheckpointError) as e:
                why = " ".join(str(e).removeprefix("none of the 1 checkpoint(s) can be read: ").split())
                notices.append(f"checkpoint {ckpt['key']} is unusable ({why}); falling back to the previous one")
                log.warning(notices[-1])
                continue
            notices += list(result.notices)
            return ckpt, notices
        return None, notices

    # -- the live display (on_update): reports only, never a write or a wait --

    def _start_display(self, run: str, chunk: int, step: int, end_step: int) -> None:
        metrics = self.ledger.run_metrics().get(run) or {}
        self._shown = {}
        self._last_checkpoint_at = self.clock.monotonic()
        self._tell(activity="training", run=run, chunk=chunk, step=step, end_step=end_step,
                   loss=metrics.get("loss"), psnr=metrics.get("psnr"), bicubic_psnr=metrics.get("bicubic_psnr"),
                   validation_step=metrics.get("val_step"))

    def _checkpointed(self, step: int, validation: dict | None) -> None:
        self._last_checkpoint_at = self.clock.monotonic()
        shown = {} if validation is None else {"psnr": validation["psnr"], "bicubic_psnr": validation["bicubic_psnr"],
                                              "validation_step": step}
        self._tell(activity="training", step=step, **shown)

    def _tell(self, **changes) -> None:
        """Passes what the worker is doing to on_update; a failing display never stops training."""
        self._shown.update(changes)
        due = None
        if self._shown.get("activity") == "training" and self._last_checkpoint_at is not None:
            due = max(0.0, self.checkpoint_interval() - (self.clock.monotonic() - self._last_checkpoint_at))
        try:
            self.on_update(WorkerProgress(self.id, **{"activity": "starting", **self._shown},
                                          next_checkpoint_s=due, seconds_left=self.session.seconds_left(self.clock)))
        except Exception as e:  # noqa: BLE001 - a display is no reason to lose a session's training
            log.warning("the progress display failed: %s", e)

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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: one worker per cache folder
    fcntl = None

from shardrun import paths
from shardrun.clock import Clock, SystemClock
from shardrun.config.job import JobConfig
from shardrun.errors import ShardrunError
from shardrun.journal import Journal
from shardrun.ledger.db import Ledger
from shardrun.session import Session
from shardrun.plan.shards import Manifest
from shardrun.errors import IntegrityError, NotFound, StoreError
from shardrun.storage.account import Account
from shardrun.storage.base import Store
from shardrun.storage.registry import open_store
from shardrun.storage.base import digest_file

log = logging.getLogger("shardrun.worker")


class WorkerError(ShardrunError):
    """The worker cannot go on (no plan, unknown account, unusable store)."""


@dataclass
class WorkerSettings:
    settle_seconds: float = 10.0  # between writing a claim and trusting the listing
    heartbeat_seconds: float = 120.0
    checkpoint_seconds: float = 600.0  # a SIGKILL loses at most this much training
    checkpoint_steps: int | None = None
    poll_seconds: float = 30.0  # when every ready chunk is taken, look again after this
    min_upload_margin_s: float = 30.0  # kept back before the deadline for the last upload, at least
    deterministic: bool = True  # TensorFlow op determinism: exact resume, some speed on a GPU
    # Validation at each checkpoint: PSNR/SSIM against bicubic on this many images drawn evenly
    # from the job's images (0: none), each centre-cropped to at most this many pixels a side so
    # that it costs a fraction of a second.
    validation_images: int = 4
    validation_crop: int = 128


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
    result: str  # "done", "yield" (deadline or stop), "lost" (another worker owns the chunk)
    train_seconds: float
    notices: list[str] = field(default_factory=list)


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


class Worker:
    def __init__(self, job: WorkerJob, account: str, session: Session, *, settings: WorkerSettings | None = None,
                 clock: Clock | None = None, on_outcome: Callable[[ChunkOutcome], None] | None = None,
                 on_progress: Callable[[str, int, int, int, float | None], None] | None = None):
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
        self.outcomes: list[ChunkOutcome] = []
        self._stop = False
        self._trainer = None
        self._server_offset: float | None = None  # store time minus this machine's time
        self._verified_shards: set[str] = set()
        self._source = None
        self._trainers: dict[str, object] = {}  # per run: reusing one keeps its compiled step
        self._upload_bps: float | None = None
        self._checkpoint_bytes = 0
        self._device: str | None = None
        self._validation: list | None = None
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
        if not job.stores:
            recorded = [Account(a["name"], a["store"], a["quota_bytes"], job.name) for a in self.ledger.accounts()]
            # Accounts with no credentials here are reached as ours.
            own = next(a for a in recorded if a.name == account)
            job.stores.update({a.name: open_store(replace(a, fallback=own)) for a in recorded})

    # -- time and the journal --

    def sync(self) -> None:
        self.ledger.sync(self.journal)

    def _write(self, kind: str, run: str | None = None, chunk: int | None = None, generation: int | None = None,
               **payload) -> None:
        local = self.clock.now()
        event = self.journal.append(kind, self.id, run, chunk, generation, payload)
        self._server_offset = event.server_time - local

    def identity(self) -> dict[str, str]:
        """Returns what every event of this worker says about where it runs (status shows it)."""
        if self._device is None:
            from shardrun.train.bench import device_description

            self._device = device_description()
        return {"account": self.account, "platform": self.session.platform, "device": self._device}

    def server_now(self) -> float | None:
        """Returns the store's time now, estimated from our last write (never another machine's clock)."""
        return None if self._server_offset is None else self.clock.now() + self._server_offset

    def request_stop(self) -> None:
        """Asks the worker to checkpoint, yield and stop (a signal handler calls this)."""
        self._stop = True
        if self._trainer is not None:
            self._trainer.request_stop()

    # -- one unit of work --

    def loop(self) -> str:
        """Does one unit of work; returns "trained", "lost", "idle", "finished" or "stopped"."""
        if self._stop:
            return "stopped"
        self.sync()
        chunks = self.ledger.chunks()
        if chunks and all(c["state"] == "done" for c in chunks):
            return "finished"
        self._expire_stale(chunks)
        ready = [c for c in self.ledger.chunks() if c["state"] == "ready"]
        if not ready:
            return "idle"
        # Different workers prefer different runs, so simultaneous claims rarely collide.
        ready.sort(key=lambda c: hashlib.sha256(f"{self.id}/{c['run']}".encode()).hexdigest())
        chunk = ready[0]
        # Shards are fetched before claiming: a claim's lease runs from the claim, and downloading
        # gigabytes from Drive can take longer than the lease.
        self._image_source()
        self._write("claim", chunk["run"], chunk["idx"], chunk["generation"], **self.identity())
        self.clock.sleep(self.settings.settle_seconds)
        self.sync()
        if not self._owns(chunk):
            log.info("lost the claim on %s chunk %d to an earlier one", chunk["run"], chunk["idx"])
            return "lost"
        outcome = self._train(chunk)
        self.outcomes.append(outcome)
        self.on_outcome(outcome)
        return "trained" if outcome.result != "lost" else "lost"

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
            if max_chunks is not None and len([o for o in self.outcomes if o.result != "lost"]) >= max_chunks:
                return "max-chunks"
            result = self.loop()
            if result in ("finished", "stopped"):
                return result
            if result == "idle":
                self.clock.sleep(self.settings.poll_seconds)

    def _owns(self, chunk: dict) -> bool:
        now = self.ledger.chunk(chunk["run"], chunk["idx"])
        return (now is not None and now["state"] == "running" and now["owner"] == self.id
                and now["generation"] == chunk["generation"])

    def _expire_stale(self, chunks: list[dict]) -> None:
        lease = self.ledger.plan()["lease_seconds"]
        server_now = self.server_now()
        for c in chunks:
            if c["state"] != "running" or c["owner"] == self.id:
                continue
            # Without an estimate of the store's time yet, write the expiry anyway: the fold
            # accepts it only if the store's time of this very event proves the lease over.
            if server_now is None or server_now - c["heartbeat_time"] >= lease:
                self._write("expire", c["run"], c["idx"], c["generation"])
                server_now = self.server_now()
        self.sync()

    # -- training a chunk --

    def _train(self, chunk: dict) -> ChunkOutcome:
        from shardrun.train.trainer import Trainer

        run, idx, generation = chunk["run"], chunk["idx"], chunk["generation"]
        config = self._train_config(run)
        notices: list[str] = []
        def fresh_trainer():
            self._trainers[run] = Trainer(config, self._image_source(),
                                          self.job.cache_dir / "checkpoints" / self.id / run, clock=self.clock)
            return self._trainers[run]

        # Reusing a run's trainer keeps its compiled step; its state is replaced by the restored
        # checkpoint, or by a fresh trainer's initial weights when there is none.
        trainer = self._trainers.get(run) or fresh_trainer()
        expected_total = self.ledger.run(run)["steps_total"]
        if trainer.total_steps != expected_total:
            raise WorkerError(f"run {run!r}: the plan counts {expected_total} steps but the data gives "
                              f"{trainer.total_steps}; was the plan made with other shards?")
        restored, restore_notices = self._restore(trainer, run, chunk)
        notices += restore_notices
        if not restored and trainer.step != 0:
            trainer = fresh_trainer()
        start_step = trainer.step
        self._trainer = trainer
        lost = False
        final: dict = {}

        def on_checkpoint(info) -> None:
            nonlocal lost
            if lost:
                return
            key = paths.checkpoint_key(self.job.name, run, idx, generation, self.id, info.step)
            stat = self._upload(key, info.path)
            figures = {"key": key, "md5": stat.md5, "step": info.step, "loss": info.loss,
                       "learning_rate": trainer.learning_rate_at(info.step),
                       **self._rates(info.patches_per_second, config.batch_size), **self.identity()}
            validation = self._validate(trainer)
            if validation is not None:
                figures["validation"] = validation
            if info.final:
                final.update(figures)
            else:
                self._write("checkpoint", run, idx, generation, **figures)

        def on_heartbeat(progress) -> None:
            nonlocal lost
            self._write("heartbeat", run, idx, generation, step=progress.step, loss=progress.loss,
                        learning_rate=progress.learning_rate,
                        **self._rates(progress.patches_per_second, config.batch_size), **self.identity())
            self.sync()
            self.on_progress(run, idx, progress.step, chunk["end_step"], progress.loss)
            if not self._owns(chunk):
                lost = True
                trainer.request_stop()
                notices.append(f"{run} chunk {idx}: another worker owns it now; stopping without writing")

        if self._stop:
            trainer.request_stop()
        started = self.clock.monotonic()
        try:
            result = trainer.train(
                until_step=chunk["end_step"], deadline=self._deadline(), reserve_s=self._upload_margin(),
                checkpoint_every_steps=self.settings.checkpoint_steps,
                checkpoint_every_s=self.settings.checkpoint_seconds,
                heartbeat_every_s=self.settings.heartbeat_seconds,
                on_checkpoint=on_checkpoint, on_heartbeat=on_heartbeat)
        finally:
            self._trainer = None
        train_seconds = self.clock.monotonic() - started
        self.sync()
        if lost or not self._owns(chunk):
            return ChunkOutcome(run, idx, generation, start_step, trainer.step, "lost", train_seconds, notices)
        if result.reason == "target":
            self._write("done", run, idx, generation, **{**self.identity(), **final})
            result_name = "done"
        else:
            self._write("yield", run, idx, generation, reason=f"{result.reason} at step {trainer.step}",
                        **{**self.identity(), **final})
            result_name = "yield"
        self.sync()
        self.on_progress(run, idx, trainer.step, chunk["end_step"], result.loss)
        return ChunkOutcome(run, idx, generation, start_step, trainer.step, result_name, train_seconds, notices)

    @staticmethod
    def _rates(patches_per_second: float | None, batch_size: int) -> dict[str, float | None]:
        return {"patches_per_second": patches_per_second,
                "steps_per_second": None if patches_per_second is None else patches_per_second / batch_size}

    def _validation_images(self) -> list:
        """Returns the validation crops: images drawn evenly (so deterministically) from the job's."""
        if self._validation is None:
            from shardrun.train.data import decode_rgb

            source, count = self._image_source(), self.settings.validation_images
            chosen = sorted({(2 * i + 1) * len(source) // (2 * count) for i in range(count)}) if count > 0 else []
            crops, side = [], self.settings.validation_crop
            for index in chosen:
                rgb = decode_rgb(source.read(index), source.name(index))
                top, left = max(0, (rgb.shape[0] - side) // 2), max(0, (rgb.shape[1] - side) // 2)
                crops.append(rgb[top:top + side, left:left + side])
            self._validation = crops
        return self._validation

    def _validate(self, trainer) -> dict | None:
        """Returns PSNR/SSIM of the model and of bicubic on the validation crops, or None.

        Inference only (no training step, no random draw), so training continues exactly as it
        would have without it. Validation is advice: a failure is logged, never fatal.
        """
        images = self._validation_images()
        if not images:
            return None
        try:
            result = trainer.evaluate(images)
        except Exception as e:  # noqa: BLE001 - a broken metric must not stop the training it reports on
            log.warning("validation failed, checkpoint reported without it: %s", e)
            return None
        return {"psnr": result.psnr, "ssim": result.ssim, "bicubic_psnr": result.bicubic_psnr,
                "bicubic_ssim": result.bicubic_ssim, "images": len(images)}

    def _train_config(self, run: str):
        """Returns the run's training settings, read from what the plan recorded in the ledger;
        the files it trains with (its own network, init weights) are fetched from the home store
        into the cache, md5-verified, and the trainer checks their sha256 against the plan's."""
        from shardrun.train.trainer import TrainConfig

        settings = json.loads(self.ledger.run(run)["config"])
        local = {}
        for kind, f in (settings.get("files") or {}).items():
            dest = self.job.cache_dir / "files" / f["key"].rsplit("/", 1)[-1]
            fetch_verified(self.job.home, f["key"], dest, f["md5"])
            local[kind] = str(dest)
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

    def _image_source(self):
        from shardrun.train.data import ShardImageSource

        if self._source is not None:
            return self._source
        plan = self.ledger.plan()
        manifest = Manifest.from_json_bytes(self.job.home.get_bytes(plan["manifest_key"], plan["manifest_md5"]))
        shard_dir = self.job.cache_dir / "shards"
        for shard in self.ledger.shards():
            self._fetch_shard(shard, shard_dir / f"{shard['id']}.tar")
        self._source = ShardImageSource(manifest.images, shard_dir)
        return self._source

    def _fetch_shard(self, shard: dict, dest: Path) -> None:
        """Fetches a shard into the cache once per session, verified; a corrupt copy is fetched again."""
        if shard["id"] not in self._verified_shards:
            fetch_verified(self.job.stores[shard["account"]], shard["key"], dest, shard["md5"])
            self._verified_shards.add(shard["id"])

    def _restore(self, trainer, run: str, chunk: dict) -> tuple[bool, list[str]]:
        """Restores the newest verified checkpoint at or before the chunk's resume point.

        Returns whether one was restored, and notices about checkpoints that were skipped.
        """
        notices: list[str] = []
        resume_at = max(chunk["step_reached"], chunk["start_step"])
        local = []
        for ckpt in self.ledger.checkpoints(run, up_to_step=resume_at):
            dest = self.job.cache_dir / "restore" / ckpt["key"].replace("/", "_")
            try:
                fetch_verified(self.job.home, ckpt["key"], dest, ckpt["md5"])
            except (IntegrityError, NotFound) as e:
                notices.append(f"checkpoint {ckpt['key']} is unusable ({e}); falling back to the previous one")
                log.warning(notices[-1])
                continue
            local.append(dest)
            if len(local) >= 2:
                break  # the trainer falls back once more by itself if the newest file is unreadable
        if local:
            notices += list(trainer.restore(local).notices)
            return True, notices
        if chunk["start_step"] > 0:
            notices.append(f"{run}: no checkpoint could be read; training again from step 0")
            log.warning(notices[-1])
        return False, notices

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
    progress_seconds: float = 2.0  # how often training tells the live display (on_update)


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
        self._forget_if_replanned()

    def _forget_if_replanned(self) -> None:
        # -- journal v2 hook (readers branch): a new plan may change the data, the shards or a
        # run's settings, so what was built for the old one is dropped and built again on use.
        plan = self.ledger.plan()
        plan_id = plan["id"] if plan else None
        if getattr(self, "_plan_id", plan_id) != plan_id:
            log.info("the job was planned again (%s); dropping cached data and trainers", plan_id)
            self._source, self._trainers, self._validation = None, {}, None
            self._verified_shards = set()
        self._plan_id = plan_id

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
                self._tell(activity="waiting", run=None, chunk=None, step=None, end_step=None)
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
                                          self.job.cache_dir / "checkpoints" / self.id / run, clock=self.clock,
                                          cache_dir=self.job.cache_dir / "decoded")
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
        self._start_display(run, idx, start_step, chunk["end_step"])
        lost = False
        final: dict = {}

        def on_checkpoint(info) -> None:
            nonlocal lost
            if lost:
                return
            self._tell(activity="checkpoint", step=info.step)
            key = paths.checkpoint_key(self.job.name, run, idx, generation, self.id, info.step)
            stat = self._upload(key, info.path)
            figures = {"key": key, "md5": stat.md5, "step": info.step, "loss": info.loss,
                       "learning_rate": trainer.learning_rate_at(info.step),
                       **self._rates(info.patches_per_second, config.batch_size), **self.identity()}
            validation = self._validate(trainer, run, idx, generation, info.step)
            if validation is not None:
                figures["validation"] = validation
            self._checkpointed(info.step, validation)
            if info.final:
                final.update(figures)
            else:
                self._write("checkpoint", run, idx, generation, **figures)
                self._tidy()

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
                on_checkpoint=on_checkpoint, on_heartbeat=on_heartbeat,
                on_report=lambda p: self._tell(activity="training", step=p.step, loss=p.loss,
                                               patches_per_second=p.patches_per_second),
                report_every_s=self.settings.progress_seconds)
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
        self._tidy()
        self.on_progress(run, idx, trainer.step, chunk["end_step"], result.loss)
        return ChunkOutcome(run, idx, generation, start_step, trainer.step, result_name, train_seconds, notices)

    def _tidy(self) -> None:
        """Deletes the checkpoints that no resume or user can need any more (retention: shardrun.sweep
        and docs/worker.md); never fatal, and judged in the store's time only."""
        if getattr(self, "sweeper", None) is None:
            from shardrun.sweep import Sweeper

            self.sweeper = Sweeper(self.job.home, self.job.name)
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

    def _validate(self, trainer, run: str, chunk: int, generation: int, step: int) -> dict | None:
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
        if (self._shown.get("activity") == "training" and self.settings.checkpoint_seconds
                and self._last_checkpoint_at is not None):
            due = max(0.0, self.settings.checkpoint_seconds - (self.clock.monotonic() - self._last_checkpoint_at))
        try:
            self.on_update(WorkerProgress(self.id, **{"activity": "starting", **self._shown},
                                          next_checkpoint_s=due, seconds_left=self.session.seconds_left(self.clock)))
        except Exception as e:  # noqa: BLE001 - a display is no reason to lose a session's training
            log.warning("the progress display failed: %s", e)

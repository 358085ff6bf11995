"""Retention with real workers (docs/worker.md, "Retention"): a long job of many chunks and
checkpoints, trained by several workers with yields and a killed one, keeps the home's checkpoints
under the bound the rule gives while every resume finds its checkpoint and the run ends with the
weights of an uninterrupted one; a store that refuses deletes for a while costs nothing but the
retries. The store's time is a FakeClock the workers' training advances (no sleeping, no timing).
"""

from __future__ import annotations

import time
import uuid

import pytest

from shardrun import paths
from shardrun.clock import FakeClock
from shardrun.config.job import load_job
from shardrun.errors import TransientError
from shardrun.ledger.retention import RetentionRule, kept_checkpoints, retained_bound, run_view
from shardrun.plan.job import plan_job
from shardrun.product.checkpoints import fetch_checkpoint
from shardrun.session import Session
from shardrun.storage.memory import MemoryStore
from shardrun.worker import Worker, WorkerJob, WorkerSettings
from tests.conftest import job_text, write_images
from tests.lagging_store import LaggingStore
from tests.test_worker_faults import RUN, final_weights, fold_journal, home_store, same_weights, straight_weights

NO_LIMIT = Session("local", 0.0, None, "test")
LEASE = 120.0  # lease_minutes = 2: the horizon of the default rule
STEP_SECONDS = 40.0  # store time one training step takes (the workers' on_progress advances it)
MAX_LAG = 60.0  # listings lag up to this much store time, less than the horizon (the rule's premise)
SETTINGS = WorkerSettings(settle_seconds=1.0, heartbeat_seconds=0.0, checkpoint_seconds=10**6, checkpoint_steps=1,
                          poll_seconds=30.0, validation_images=2)


def chunk_run(chunk_steps: int, epochs: int) -> dict:
    """The test run (3 steps an epoch) cut by colab-free's 33,960 s into chunks of `chunk_steps` steps."""
    return dict(RUN, epochs=epochs, patches_per_second=16 * chunk_steps / 33_960 * 1.001)


class Killed(BaseException):
    """The worker's process dies here (SIGKILL): nothing after it runs."""


class Home(LaggingStore):
    """One worker's view of the home store: its listings lag (up to MAX_LAG of store time); every
    checkpoint object uploaded is counted; it can kill its worker right after the upload of a
    checkpoint (and its pictures), before the `checkpoint` event; and its deletes can fail."""

    def __init__(self, inner: MemoryStore, clock: FakeClock, seed: str, written: dict[str, int]):
        super().__init__(inner, MAX_LAG, seed=seed, now=clock.now)
        self.clock = clock
        self.written = written
        self.kill_after_step: int | None = None
        self._armed = False
        self.refuse_deletes_until: float | None = None
        self.refused: list[str] = []

    def _write(self, key, source, digest):
        if self._armed and key.startswith(paths.journal_prefix(key.split("/")[0])):
            raise Killed()
        stat = super()._write(key, source, digest)
        found = paths.checkpoint_object_of(key.split("/")[0], key)
        if found is not None:
            self.written[key] = digest.size
            if self.kill_after_step is not None and found["kind"] == "val.png" and found["step"] >= self.kill_after_step:
                self._armed = True  # the next journal write would be this checkpoint's event
        return stat

    def _delete(self, key):
        if self.refuse_deletes_until is not None and self.clock.now() < self.refuse_deletes_until:
            self.refused.append(key)
            raise TransientError(f"{self.url}: deleting {key}: 503 backend error (after retries)")
        super()._delete(key)


def plan_on_memory(tmp_path, runs: list[dict]):
    """Plans a job on memory stores, then hands their time to a FakeClock; returns (job, report, clock)."""
    tag = f"keep-{uuid.uuid4().hex[:8]}"
    write_images(tmp_path / "images", 12, size=(48, 40))
    text = job_text(runs=runs, reserve_mb=0, lease_minutes=LEASE / 60).replace("local://stores/", f"memory://{tag}-")
    (tmp_path / "job.toml").write_text(text)
    job = load_job(tmp_path / "job.toml")
    report = plan_job(job, scan_workers=1)
    clock = FakeClock(time.time() + 60)  # the store's time from now on, after the plan's real-time events
    for account in ("alice", "bob"):
        MemoryStore.named(f"{tag}-{account}").clock = clock
    return job, report, clock


def make_worker(job, account: str, clock: FakeClock, written: dict, folder, on_step=None) -> Worker:
    """A worker of its own (ledger, cache, identity, lagging view of the home) whose every step
    takes STEP_SECONDS of store time; `on_step(worker, step)` runs after each."""
    name = f"{account}-{uuid.uuid4().hex[:4]}"
    inner = MemoryStore.named(job.home.store.removeprefix("memory://"))
    home = Home(inner, clock, seed=name, written=written)
    stores = {a.name: (home if a.name == job.home.name else job.open_store(a)) for a in job.accounts}
    own = WorkerJob(job.name, home, stores, folder / name / "ledger.db", folder / name / "cache")
    worker = Worker(own, account, NO_LIMIT, settings=SETTINGS, clock=clock)

    def progressed(run, chunk, step, end, loss):
        clock.advance(STEP_SECONDS)
        if on_step is not None:
            on_step(worker, step)

    worker.on_progress = progressed
    return worker


class Meter:
    """Counts the checkpoint objects on the home store and checks them against the rule's bound."""

    def __init__(self, store: MemoryStore, job, chunks: int):
        self.store, self.prefix = store, paths.checkpoints_prefix(job.name, "a")
        self.bound = retained_bound(chunks, LEASE, checkpoint_seconds=STEP_SECONDS)
        self.most_files = self.most_pictures = self.most_bytes = 0
        self.largest_file = self.largest_pictures = 0

    def __call__(self, *_) -> None:
        stats = self.store.list(self.prefix)
        files = [s for s in stats if s.key.endswith(".ckpt")]
        pictures = [s for s in stats if s.key.endswith(".val.png")]
        assert len(files) + len(pictures) == len(stats)  # nothing else is written there
        self.largest_file = max([self.largest_file] + [s.size for s in files])
        self.largest_pictures = max([self.largest_pictures] + [s.size for s in pictures])
        total = sum(s.size for s in stats)
        self.most_files, self.most_pictures = max(self.most_files, len(files)), max(self.most_pictures, len(pictures))
        self.most_bytes = max(self.most_bytes, total)
        assert len(files) <= self.bound, f"{len(files)} checkpoint files on the home, the rule allows {self.bound}"
        assert len(pictures) <= self.bound + 1
        assert total <= self.bound * self.largest_file + (self.bound + 1) * self.largest_pictures


def test_a_long_job_keeps_the_homes_checkpoints_bounded_and_every_resume_finds_its_own(tmp_path):
    chunk_steps = 12
    job, report, clock = plan_on_memory(tmp_path, [chunk_run(chunk_steps, epochs=40)])  # 120 steps, 10 chunks
    store = home_store(job)
    plan = fold_journal(job, tmp_path / "plan.db")
    assert [(c["start_step"], c["end_step"]) for c in plan.chunks("a")] == [
        (i * chunk_steps, (i + 1) * chunk_steps) for i in range(10)]
    written: dict[str, int] = {}
    meter = Meter(store, job, chunks=10)

    def stop_at(step_wanted):
        def on_step(worker, step):
            meter()
            if step >= step_wanted:
                worker.request_stop()
        return on_step

    # alice trains chunk 0 and stops in chunk 1 (a yield); bob goes on and is killed in chunk 3
    # right after uploading a checkpoint, before its event; carol frees the chunk once the lease
    # is over (store time), resumes and yields in chunk 6; dave finishes.
    alice = make_worker(job, "alice", clock, written, tmp_path, stop_at(15))
    assert alice.run() == "stopped"
    bob = make_worker(job, "bob", clock, written, tmp_path, lambda w, s: meter())
    bob.job.home.kill_after_step = 40
    with pytest.raises(Killed):
        bob.run()
    meter()
    carol = make_worker(job, "alice", clock, written, tmp_path, stop_at(75))
    assert carol.run() == "stopped"
    dave = make_worker(job, "bob", clock, written, tmp_path, lambda w, s: meter())
    assert dave.run() == "finished"
    meter()

    ledger = fold_journal(job, tmp_path / "all-events.db")
    assert {c["state"] for c in ledger.chunks()} == {"done"}
    # Every resume found the checkpoint it was meant to start from: the yield's step, or the
    # killed worker's last accepted checkpoint; none fell back.
    outcomes = [(o.chunk, o.start_step, o.step, o.result, o.notices)
                for w in (alice, bob, carol, dave) for o in w.outcomes]
    assert all(notices == [] for *_, notices in outcomes), outcomes
    killed_at = max(cp["step"] for cp in ledger.checkpoints("a") if cp["worker"] == bob.id)
    assert killed_at == 39  # the checkpoint of step 40 was uploaded, its event never written
    yields = [(chunk, step) for chunk, _, step, result, _ in outcomes if result == "yield"]
    assert yields == [(1, 15), (6, 75)]
    starts = {(chunk, start) for chunk, start, *_ in outcomes}
    # Each chunk started at its start, at the yield's step, or (chunk 3) where the killed worker's
    # last accepted checkpoint was.
    assert starts == {(i, i * chunk_steps) for i in range(10) if i != 3} | {(1, 15), (3, killed_at), (6, 75)}
    attempts = {(a["chunk"], a["generation"]): a["outcome"] for a in ledger.db.query("SELECT * FROM attempts")}
    assert attempts[(1, 0)] == "yield" and attempts[(3, 0)] == "expired" and attempts[(6, 0)] == "yield"

    # The run ends with the weights of an uninterrupted run.
    assert same_weights(final_weights(ledger, store, "a", tmp_path), straight_weights(job, "a", tmp_path))

    # Far fewer checkpoints stayed than were written, and never more than the rule allows.
    files_written = [k for k in written if k.endswith(".ckpt")]
    assert len(files_written) >= 120 and meter.most_files <= meter.bound and 4 * meter.bound < len(files_written)
    assert meter.largest_file <= report.retained.largest  # plan's size estimate is an upper bound

    # Two horizons later the last worker's sweeper, passing again (it lists a few done chunks'
    # folders a pass), leaves exactly what the rule keeps for good: every chunk's final, the
    # latest three, the best, and their pictures; the killed worker's upload (no event) and its
    # pictures are gone.
    clock.advance(2 * LEASE)
    dave.sync()
    for _ in range(3):
        dave.sweeper.tidy(dave.ledger, clock.now())  # the store time of a later event
    kept = kept_checkpoints(run_view(ledger, "a"), clock.now(), RetentionRule())
    left = {s.key for s in store.list(paths.checkpoints_prefix(job.name, "a"))}
    assert {k for k in left if k.endswith(".ckpt")} == set(kept)
    assert 10 <= len(kept) <= 10 + 4
    orphan = paths.checkpoint_key(job.name, "a", 3, 0, bob.id, 40)
    assert orphan in written and orphan not in left
    for choice in ("final", "latest", "best"):
        fetched = fetch_checkpoint(job, ledger, "a", choice, tmp_path / f"export-{choice}")
        assert fetched.notices == [], choice
    pictures_written = [k for k in written if k.endswith(".val.png")]
    figures = (f"checkpoint files: {len(files_written)} written ({sum(written[k] for k in files_written):,} bytes; "
               f"with {len(pictures_written)} pictures {sum(written.values()):,} bytes), at most {meter.most_files} "
               f"files and {meter.most_pictures} pictures on the home at once ({meter.most_bytes:,} bytes; bound "
               f"{meter.bound} files), {len(kept)} files at the end "
               f"({sum(s.size for s in store.list(paths.checkpoints_prefix(job.name, 'a'))):,} bytes with pictures)")
    print(figures)


def test_deletes_the_store_refuses_are_retried_later_and_never_stop_the_worker(tmp_path):
    job, _, clock = plan_on_memory(tmp_path, [chunk_run(6, epochs=10)])  # 30 steps, 5 chunks
    store = home_store(job)
    written: dict[str, int] = {}
    worker = make_worker(job, "alice", clock, written, tmp_path)
    # The store refuses every delete for the first 14 steps' worth of store time.
    worker.job.home.refuse_deletes_until = clock.now() + 14 * STEP_SECONDS
    assert worker.run() == "finished"
    refused = set(worker.job.home.refused)
    assert refused and worker.sweeper.failures
    assert all("trying again later" in line for line in worker.sweeper.failures)
    # Each refused key was deleted by a later pass (none is on the store now), once deletes worked.
    assert refused <= set(worker.sweeper.deleted)
    left = {s.key for s in store.list(paths.checkpoints_prefix(job.name, "a"))}
    assert not refused & left
    assert same_weights(final_weights(fold_journal(job, tmp_path / "all.db"), store, "a", tmp_path),
                        straight_weights(job, "a", tmp_path))

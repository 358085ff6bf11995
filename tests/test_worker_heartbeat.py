"""Heartbeats from a thread of their own, their interval against the lease, and the checkpoint
interval that adapts to what a checkpoint costs. Everything runs on a FakeClock that the test
advances (the stores' time too), so no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import BinaryIO, Callable

import pytest

from tests.conftest import job_text, write_images
from tests.delegating_store import DelegatingStore
from tests.lagging_store import LaggingStore
from tests.test_worker_faults import RUN, final_weights, same_weights, straight_weights
from shardrun.clock import FakeClock
from shardrun.config.job import load_job
from shardrun.journal import Journal
from shardrun.ledger.db import Ledger
from shardrun.plan.job import plan_job
from shardrun.session import Session
from shardrun.storage.base import Digest, Stat, Store
from shardrun.storage.memory import MemoryStore
from shardrun.worker import Worker, WorkerError, WorkerJob, WorkerSettings

NO_LIMIT = Session("local", 0.0, None, "test")


class CheckpointHookStore(DelegatingStore):
    """A store that calls `hook(key)` before writing a checkpoint's file: a test makes the upload
    block until released, or "take" seconds on the fake clock."""

    def __init__(self, inner: Store, hook: Callable[[str], None]):
        super().__init__(inner)
        self.hook = hook

    def _write(self, key: str, source: BinaryIO, digest: Digest) -> Stat:
        if key.endswith(".ckpt"):
            self.hook(key)
        return super()._write(key, source, digest)


def planned_in_memory(tmp_path, runs, **job_keys):
    """Plans a job on memory stores whose time is a FakeClock; returns (job, clock)."""
    tag = f"beat-{uuid.uuid4().hex[:8]}"
    write_images(tmp_path / "images", 12, size=(48, 40))
    text = job_text(runs=runs, reserve_mb=0, **job_keys).replace("local://stores/", f"memory://{tag}-")
    (tmp_path / "job.toml").write_text(text)
    job = load_job(tmp_path / "job.toml")
    plan_job(job, scan_workers=1)
    clock = FakeClock(time.time() + 60)  # the store's time from now on, after the plan's real-time events
    for account in job.accounts:
        MemoryStore.named(f"{tag}-{account.name}").clock = clock
    return job, clock


def hooked_job(job, hook) -> WorkerJob:
    worker_job = WorkerJob.from_config(job)
    worker_job.home = worker_job.stores[job.home.name] = CheckpointHookStore(worker_job.home, hook)
    return worker_job


def journal_events(job, kind: str, worker: str | None = None) -> list:
    journal = Journal(MemoryStore.named(job.home.store.removeprefix("memory://")), job.name)
    events, _ = journal.read(journal.keys())
    return sorted((e for e in events if e.kind == kind and (worker is None or e.worker == worker)),
                  key=lambda e: e.order)


def fold(job, clock) -> Ledger:
    ledger = Ledger.open(None)
    ledger.sync(Journal(MemoryStore.named(job.home.store.removeprefix("memory://")), job.name, clock))
    return ledger


def wait_until(condition, what: str, limit_s: float = 120.0):
    """Waits (in real time, a cap only: each step is driven by the test) until `condition()` holds."""
    end = time.monotonic() + limit_s
    while not (result := condition()):
        if time.monotonic() > end:
            pytest.fail(f"no {what} within {limit_s} s")
        time.sleep(0.02)
    return result


# -- heartbeats go on while a checkpoint uploads ---------------------------------------------------


def test_heartbeats_continue_during_a_long_checkpoint_upload_and_the_lease_holds(tmp_path):
    job, clock = planned_in_memory(tmp_path, [RUN], lease_minutes=1)
    entered, release = threading.Event(), threading.Event()

    def blocking_upload(key: str) -> None:  # the first checkpoint's upload hangs until released
        entered.set()
        release.wait()

    settings = WorkerSettings(settle_seconds=1, heartbeat_seconds=10, checkpoint_seconds=3600, checkpoint_steps=1,
                              validation_images=0)
    worker = Worker(hooked_job(job, blocking_upload), "alice", NO_LIMIT, settings=settings, clock=clock)
    results: list = []
    training = threading.Thread(target=lambda: results.append(worker.loop()), daemon=True)
    training.start()
    try:
        wait_until(entered.is_set, "checkpoint upload")
        before = len(journal_events(job, "heartbeat", worker.id))
        for i in range(1, 13):  # two minutes of store time, twice the lease, all within one upload
            clock.advance(10)
            wait_until(lambda: len(journal_events(job, "heartbeat", worker.id)) >= before + i, f"heartbeat {i}")
        beats = journal_events(job, "heartbeat", worker.id)[before:]
        assert [b.payload["step"] for b in beats] == [1] * len(beats)  # the step reached before the upload
        assert all(later.server_time - earlier.server_time <= 10 for earlier, later in zip(beats, beats[1:]))
        # Another worker, seeing the upload take so long, tries to free the chunk: the lease holds.
        other = Journal(MemoryStore.named(job.home.store.removeprefix("memory://")), job.name, clock)
        other.plan = worker.ledger.plan()["id"]
        other.append("expire", "bob-elsewhere-1-abcdef", "a", 0, 0)
        chunk = fold(job, clock).chunk("a", 0)
        assert (chunk["state"], chunk["owner"], chunk["generation"]) == ("running", worker.id, 0)
    finally:
        release.set()
        training.join(120)
    assert results == ["trained"]
    assert worker.outcomes[-1].result == "done"
    ledger = fold(job, clock)
    chunk = ledger.chunk("a", 0)
    assert (chunk["state"], chunk["owner"], chunk["generation"]) == ("done", worker.id, 0)
    assert "expired" not in ledger.attempt_totals()


def test_the_heartbeat_thread_finds_the_chunk_lost_and_training_stops_without_writing(tmp_path):
    # One chunk of 6 steps (platform local); another worker's earlier claim stays out of this
    # worker's listings for 30 s of store time (a lagging listing), so it trains, believing it owns it.
    job, clock = planned_in_memory(tmp_path, [RUN], lease_minutes=1, platform="local")
    raw = MemoryStore.named(job.home.store.removeprefix("memory://"))
    entered, release = threading.Event(), threading.Event()

    def blocking_upload(key: str) -> None:
        entered.set()
        release.wait()

    bob = Journal(raw, job.name, clock)
    bob.plan = fold(job, clock).plan()["id"]
    bob.append("claim", "bob-elsewhere-1-abcdef", "a", 0, 0)
    clock.advance(1)  # the worker's own claim comes a second later in the store's time
    worker_job = WorkerJob.from_config(job)
    lagging = LaggingStore(raw, 30, min_lag_s=30, now=clock.now)
    worker_job.home = worker_job.stores[job.home.name] = CheckpointHookStore(lagging, blocking_upload)
    settings = WorkerSettings(settle_seconds=1, heartbeat_seconds=10, checkpoint_seconds=3600, checkpoint_steps=1,
                              validation_images=0)
    worker = Worker(worker_job, "alice", NO_LIMIT, settings=settings, clock=clock)
    results: list = []
    training = threading.Thread(target=lambda: results.append(worker.loop()), daemon=True)
    training.start()
    try:
        wait_until(entered.is_set, "checkpoint upload")
        assert worker._heartbeat is not None and not worker._heartbeat.lost.is_set()
        for _ in range(3):  # 30 s: bob's claim surfaces at the third heartbeat's sync
            clock.advance(10)
        wait_until(lambda: worker._heartbeat is not None and worker._heartbeat.lost.is_set(), "lost flag")
    finally:
        release.set()
        training.join(120)
    assert results == ["lost"]
    (outcome,) = worker.outcomes
    assert outcome.result == "lost" and outcome.step < 6  # it stopped at the next step, not at the chunk's end
    assert any("another worker owns it now" in n for n in outcome.notices)
    assert journal_events(job, "done", worker.id) == [] and journal_events(job, "yield", worker.id) == []
    assert fold(job, clock).chunk("a", 0)["owner"] == "bob-elsewhere-1-abcdef"


# -- the heartbeat interval against the lease ------------------------------------------------------


def test_a_heartbeat_longer_than_a_third_of_the_lease_is_refused_and_the_default_fits_it(tmp_path):
    job, clock = planned_in_memory(tmp_path, [RUN], lease_minutes=1)
    with pytest.raises(WorkerError) as refused:
        Worker(WorkerJob.from_config(job), "alice", NO_LIMIT, settings=WorkerSettings(heartbeat_seconds=30),
               clock=clock)
    message = str(refused.value)
    assert "\n" not in message and "more than a third of the plan's lease (1 min" in message
    assert "--heartbeat-minutes 0.333333 or less" in message
    fitting = Worker(WorkerJob.from_config(job), "alice", NO_LIMIT, settings=WorkerSettings(), clock=clock)
    assert fitting.heartbeat_interval() == 20.0  # min(2 min, a third of the lease)
    assert Worker(WorkerJob.from_config(job), "bob", NO_LIMIT, settings=WorkerSettings(heartbeat_seconds=20),
                  clock=clock).heartbeat_interval() == 20.0


def test_the_default_heartbeat_is_two_minutes_under_a_long_lease(tmp_path):
    job, clock = planned_in_memory(tmp_path, [RUN])  # lease_minutes: 10 by default
    worker = Worker(WorkerJob.from_config(job), "alice", NO_LIMIT, clock=clock)
    assert worker.heartbeat_interval() == 120.0


# -- the checkpoint interval adapts to what a checkpoint costs ------------------------------------


@pytest.mark.parametrize(("upload_s", "periodic_steps", "interval_s"), [
    # Cheap checkpoints: every minute (the floor), the first too, before any was measured.
    (0.5, [7, 13, 19, 25, 31, 37, 43, 49, 55], 60.0),
    # A 3 s checkpoint every 2 min would take 2.5% of the session: every 150 s, so it takes 2%.
    (3.0, [7, 22, 37, 52], 150.0),
])
def test_the_checkpoint_interval_adapts_to_what_a_checkpoint_costs(tmp_path, upload_s, periodic_steps, interval_s):
    # One chunk of 60 steps (platform local: no session limit); each step "takes" 10 s.
    job, clock = planned_in_memory(tmp_path, [dict(RUN, epochs=20)], platform="local")
    settings = WorkerSettings(settle_seconds=1, heartbeat_seconds=10, progress_seconds=0, validation_images=0)
    worker = Worker(hooked_job(job, lambda key: clock.advance(upload_s)), "alice", NO_LIMIT, settings=settings,
                    clock=clock, on_progress=lambda run, chunk, step, end, loss: clock.advance(10))
    assert worker.checkpoint_interval() == 60.0  # nothing measured yet: the floor
    assert worker.loop() == "trained"
    assert worker.outcomes[-1].result == "done" and worker.outcomes[-1].step == 60
    steps = [e.payload["step"] for e in journal_events(job, "checkpoint", worker.id)]
    assert steps == periodic_steps
    assert worker.checkpoint_costs == [upload_s] * (len(periodic_steps) + 1)  # and the final one's
    assert worker.checkpoint_interval() == interval_s
    # An explicit interval overrides it.
    fixed = Worker(WorkerJob.from_config(job), "bob", NO_LIMIT, clock=clock,
                   settings=WorkerSettings(checkpoint_seconds=600.0))
    fixed.checkpoint_costs.append(upload_s)
    assert fixed.checkpoint_interval() == 600.0


def test_the_checkpoint_cadence_does_not_change_the_weights(tmp_path):
    job, clock = planned_in_memory(tmp_path, [dict(RUN, epochs=20)], platform="local")
    settings = WorkerSettings(settle_seconds=1, heartbeat_seconds=10, progress_seconds=0, validation_images=0)
    costs = iter([0.5, 6.0, 0.1, 2.0, 9.0] + [1.0] * 20)  # the interval changes after each checkpoint
    worker = Worker(hooked_job(job, lambda key: clock.advance(next(costs))), "alice", NO_LIMIT, settings=settings,
                    clock=clock, on_progress=lambda run, chunk, step, end, loss: clock.advance(10))
    assert worker.loop() == "trained"
    assert len(journal_events(job, "checkpoint", worker.id)) >= 3
    ledger = fold(job, clock)
    store = MemoryStore.named(job.home.store.removeprefix("memory://"))
    assert same_weights(final_weights(ledger, store, "a", tmp_path), straight_weights(job, "a", tmp_path))

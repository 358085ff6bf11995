"""Real `shardrun worker` processes: signals, and workers SIGKILLed at random while a job runs.

These start the installed console script, so they test the command as a notebook runs it: the
signal handlers, the exit status, and what a killed process leaves on the store and in the ledger.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shardrun.journal import Journal
from shardrun.ledger.db import Ledger
from shardrun.train.trainer import read_checkpoint
from tests.test_worker_faults import (
    RUN,
    check_finished,
    final_weights,
    fold_journal,
    home_store,
    plan_test_job,
    same_weights,
    straight_weights,
    unverified_checkpoints,
)

SHARDRUN = Path(sys.executable).with_name("shardrun")  # the console script of this environment
FAST_FLAGS = ["--settle-seconds", "0.5", "--poll-seconds", "0.5", "--checkpoint-minutes", "0.02",
              "--heartbeat-minutes", "0.01"]  # checkpoints every 1.2 s, heartbeats every 0.6 s


def start_worker(job, account: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([str(SHARDRUN), "worker", str(job.base_dir / "job.toml"), "--account", account,
                                 *FAST_FLAGS], stdout=out, stderr=subprocess.STDOUT, cwd=job.base_dir)


def events_of(job, process: subprocess.Popen, kind: str) -> list:
    """Returns the journal's events of `kind` written by the worker running as `process`."""
    journal = Journal(home_store(job), job.name)
    events, _ = journal.read(journal.keys())
    return [e for e in events if e.kind == kind and f"-{process.pid}-" in e.worker]


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    """Polls `condition` until it returns something true; fails naming `what` (and the worker's log)."""
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        if result := condition():
            return result
        if process is not None and process.poll() is not None:
            pytest.fail(f"the worker exited ({process.returncode}) before {what}:\n{log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout} s" + (f":\n{log.read_text()}" if log else ""))


@pytest.fixture
def long_job(tmp_path):
    """A job whose only chunk (platform local: no session limit) takes far longer than the tests."""
    return plan_test_job(tmp_path, [dict(RUN, epochs=5000)], platform="local")


# -- signals ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_yields_the_exact_step_and_exits_0(long_job, tmp_path, signum):
    log = tmp_path / "worker.log"
    worker = start_worker(long_job, "alice", log)
    try:
        wait_for(lambda: events_of(long_job, worker, "checkpoint"), 120, "checkpoint event", worker, log)
        worker.send_signal(signum)
        assert worker.wait(timeout=60) == 0, log.read_text()
    finally:
        worker.kill()
    output = log.read_text()
    (yielded,) = events_of(long_job, worker, "yield")
    step = yielded.payload["step"]
    assert f"a chunk 0: yield at step {step} (from 0," in output and "worker stopped: stopped" in output
    assert yielded.payload["reason"] == f"stopped at step {step}"

    ledger = fold_journal(long_job, tmp_path / "all-events.db")
    chunk = ledger.chunk("a", 0)
    assert (chunk["state"], chunk["generation"], chunk["owner"]) == ("ready", 1, None)
    assert chunk["step_reached"] == step > chunk["start_step"] == 0
    assert chunk["checkpoint_key"] == yielded.payload["key"] and unverified_checkpoints(ledger, home_store(long_job)) == set()
    path = tmp_path / "yielded.ckpt.npz"
    home_store(long_job).download(chunk["checkpoint_key"], path, expected_md5=chunk["checkpoint_md5"])
    assert read_checkpoint(path)[0]["step"] == step


@pytest.mark.slow
def test_a_second_signal_exits_at_once_and_leaves_everything_readable(long_job, tmp_path):
    log = tmp_path / "worker.log"
    worker = start_worker(long_job, "alice", log)
    try:
        wait_for(lambda: events_of(long_job, worker, "checkpoint"), 120, "checkpoint event", worker, log)
        # Two signals of different kinds do not merge into one while pending, so the second is
        # handled while the first one's stop is under way (a graceful stop here takes ~50 ms).
        worker.send_signal(signal.SIGTERM)
        worker.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert worker.wait(timeout=10) == 130, log.read_text()
        assert time.monotonic() - started < 5
    finally:
        worker.kill()
    with sqlite3.connect(long_job.ledger_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    own = Ledger.open(long_job.ledger_path)  # the worker's own ledger, written until the exit
    own.sync(Journal(home_store(long_job), long_job.name))
    everything = fold_journal(long_job, tmp_path / "all-events.db")
    assert own.dump() == everything.dump() and everything.bad_events() == []
    assert everything.checkpoints("a") and unverified_checkpoints(everything, home_store(long_job)) == set()
    assert everything.chunk("a", 0)["state"] in ("running", "ready")  # yielded, or freed by its lease later


# -- SIGKILL at random ------------------------------------------------------------------------------

KILLS = 10
CHUNK_STEPS = 30
# 12 images, 4 patches each, batches of 16: 3 steps per epoch. A colab-free session leaves 33,960 s
# to train: this throughput makes that CHUNK_STEPS steps.
CHUNK_PPS = 16 * CHUNK_STEPS / 33_960 * 1.001
CRASH_RUNS = [dict(RUN, name="a", epochs=100, patches_per_second=CHUNK_PPS),
              dict(RUN, name="b", model="srcnn-915", seed=4, epochs=60, patches_per_second=CHUNK_PPS)]


@pytest.mark.slow
def test_workers_killed_at_random_lose_nothing_and_end_with_the_straight_weights(tmp_path):
    job = plan_test_job(tmp_path, CRASH_RUNS, lease_minutes=0.05)  # a killed worker's chunk frees in 3 s
    plan = fold_journal(job, tmp_path / "plan.db")
    assert {r["name"]: (r["steps_total"], len(plan.chunks(r["name"]))) for r in plan.runs()} == {
        "a": (300, 10), "b": (180, 6)}
    kills = kill_at_random(job, tmp_path, random.Random(7), KILLS)
    victims_owning = sum(k["owning"] for k in kills)

    ledger = fold_journal(job, tmp_path / "all-events.db")
    check_finished(ledger, home_store(job))
    assert {r["name"]: r["steps_done"] for r in ledger.runs()} == {"a": 300, "b": 180}
    assert victims_owning >= KILLS // 2
    # The chunks of killed owners went back to ready, at a later generation, when their lease expired.
    assert sum(c["generation"] for c in ledger.chunks()) >= 3
    for run in ("a", "b"):
        assert same_weights(final_weights(ledger, home_store(job), run, tmp_path),
                            straight_weights(job, run, tmp_path)), run


def kill_at_random(job, tmp_path: Path, rng: random.Random, kills: int) -> list[dict]:
    """Runs three `shardrun worker` processes on `job` until its ledger is finished, SIGKILLing
    one every 2-4 s (`kills` times; a new one starts in its place), then lets the survivors exit;
    returns each kill: whether some worker owned a chunk then, and the chunks the victim owned."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log_of: dict[int, Path] = {}

    def spawn() -> subprocess.Popen:
        log = logs / f"worker-{len(log_of) + 1}.log"
        process = start_worker(job, ["alice", "bob"][len(log_of) % 2], log)
        log_of[process.pid] = log
        return process

    workers = [spawn() for _ in range(3)]
    watcher = Ledger.open(tmp_path / "watcher.db")
    journal = Journal(home_store(job), job.name)
    made: list[dict] = []
    next_kill = time.monotonic() + 8  # let the first ones import TensorFlow and claim
    limit = time.monotonic() + 420
    try:
        while True:
            watcher.sync(journal)
            if watcher.finished():
                break
            chunks = watcher.chunks()
            assert time.monotonic() < limit, f"job not done after {len(made)} kills: {chunks}"
            for w in workers:
                if w.poll() not in (None, 0):
                    pytest.fail(f"worker {w.pid} failed ({w.returncode}):\n{log_of[w.pid].read_text()}")
            running = [c for c in chunks if c["state"] == "running"]
            owning = [w for w in workers if w.poll() is None and any(f"-{w.pid}-" in c["owner"] for c in running)]
            # Kill a worker that owns a chunk, or any one when none has owned one for 20 s (on a
            # loaded machine a new worker takes that long to import TensorFlow and claim).
            if len(made) < kills and time.monotonic() >= next_kill and (owning or time.monotonic() >= next_kill + 20):
                victim = rng.choice(owning or [w for w in workers if w.poll() is None])
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                made.append({"owning": bool(owning), "chunks": [c for c in running if f"-{victim.pid}-" in c["owner"]]})
                workers.remove(victim)
                workers.append(spawn())
                next_kill = time.monotonic() + rng.uniform(2.0, 4.0)
            time.sleep(0.3)
        assert len(made) >= kills, f"the job ended after only {len(made)} kills: make it longer"
        for w in workers:  # the survivors notice the job is finished and exit cleanly
            assert w.wait(timeout=60) == 0, log_of[w.pid].read_text()
    finally:
        for w in workers:
            w.kill()
    return made


# -- a collaborative run under SIGKILLs -------------------------------------------------------------

# 12 images in 3 parts of 4, one step per epoch: 900 inner steps per replica in rounds of 300 (a
# unit trains for seconds, so the kills land mid-round).
TOGETHER = dict(RUN, name="c", epochs=900, mode="collaborative", replicas=3, sync_every=300)
COLLABORATIVE_KILLS = 6


@pytest.mark.slow
def test_a_collaborative_run_under_sigkills_ends_with_the_weights_of_one_process(tmp_path):
    import dataclasses
    import shutil

    from shardrun.config.job import load_job
    from shardrun.worker import Worker, WorkerJob
    from tests.test_worker_faults import FAST, NO_LIMIT

    job = plan_test_job(tmp_path / "job", [TOGETHER], platform="local", validation_share=0, lease_minutes=0.05)
    shutil.copytree(job.base_dir, tmp_path / "reference")
    # The reference: one process stepping the replicas in turn, round after round, never stopped.
    reference = load_job(tmp_path / "reference" / "job.toml")
    settings = dataclasses.replace(FAST, checkpoint_steps=None)  # it never needs to resume
    assert Worker(WorkerJob.from_config(reference), "alice", NO_LIMIT, settings=settings).run() == "finished"
    expected = fold_journal(reference, tmp_path / "reference.db").rounds("c")

    kills = kill_at_random(job, tmp_path, random.Random(11), COLLABORATIVE_KILLS)
    # kills of a worker that had trained some of its unit's round
    mid_round = sum(any(c["step_reached"] > c["start_step"] for c in k["chunks"]) for k in kills)

    ledger = fold_journal(job, tmp_path / "all-events.db")
    assert ledger.finished() and ledger.bad_events() == []
    rounds = ledger.rounds("c")
    assert [json.loads(r["replicas"]) for r in rounds] == [[0, 1, 2]] * 3
    # Every round's global weights, and so the run's, are the one process's, bit for bit.
    assert [r["weights_sha256"] for r in rounds] == [r["weights_sha256"] for r in expected]
    assert [r["momentum_sha256"] for r in rounds] == [r["momentum_sha256"] for r in expected]
    assert mid_round >= 1  # at least one unit was killed after it had trained some of its round
    assert sum(c["generation"] for c in ledger.chunks("c")) >= 2  # killed units were taken over

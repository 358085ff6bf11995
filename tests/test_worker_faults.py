"""The worker under faults: lagging listings, a vanished store, damaged checkpoints and caches,
clocks hours off, and two workers under one account name. Workers run in-process (threads where
several must run at once); the run's weights are checked against a straight, uninterrupted run.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import job_text, write_images
from tests.lagging_store import LaggingStore
from shardrun import paths
from shardrun.clock import FakeClock
from shardrun.config.job import load_job
from shardrun.plan.job import plan_job
from shardrun.journal import Journal
from shardrun.ledger.db import Ledger
from shardrun.session import Session
from shardrun.plan.shards import Manifest
from shardrun.errors import IntegrityError, NotFound, StoreError
from shardrun.storage.base import Store
from shardrun.storage.account import Account
from shardrun.storage.registry import open_store
from shardrun.storage.base import digest_file
from shardrun.storage.memory import MemoryStore
from shardrun.worker import Worker, WorkerJob, WorkerSettings

FAST = WorkerSettings(settle_seconds=0.01, heartbeat_seconds=0.0, checkpoint_seconds=3600, checkpoint_steps=1,
                      poll_seconds=0.01)
NO_LIMIT = Session("local", 0.0, None, "test")
# 12 images, 4 patches each, batches of 16: 3 steps per epoch; chunks of 2 steps on colab-free.
RUN = dict(name="a", model="espcn", scale=2, channels=1, epochs=2, batch_size=16, patch_size=16,
           patches_per_image=4, patches_per_second=0.000943, seed=3)


# -- helpers (test_worker_crash.py uses them too) -------------------------------------------------


def plan_test_job(folder: Path, runs: list[dict], **job_keys):
    """Writes 12 small images and a job of `runs` into `folder`, plans it; returns the JobConfig."""
    write_images(folder / "images", 12, size=(48, 40))
    (folder / "job.toml").write_text(job_text(runs=runs, reserve_mb=0, **job_keys))
    job = load_job(folder / "job.toml")
    plan_job(job, scan_workers=1)
    return job


def home_store(job) -> Store:
    return open_store(Account(job.home.name, job.home.store, base_dir=job.base_dir))


def fold_journal(job, path: Path) -> Ledger:
    """Returns a new ledger at `path` folded from every event on the store, as any newcomer sees it."""
    ledger = Ledger.open(path)
    ledger.sync(Journal(home_store(job), job.name))
    return ledger


def accepted_dones(ledger: Ledger) -> dict[tuple[str, int], int]:
    """Returns, per chunk, how many `done` events the fold accepted (from the owner of its generation)."""
    counts = {}
    for c in ledger.chunks():
        (n,) = ledger.db.execute(
            "SELECT COUNT(*) FROM events WHERE kind = 'done' AND run = ? AND chunk = ? AND worker = ? "
            "AND generation = ? AND server_time = ?",
            [c["run"], c["idx"], c["owner"], c["generation"], c["done_time"]]).fetchone()
        counts[(c["run"], c["idx"])] = n
    return counts


def unverified_checkpoints(ledger: Ledger, store: Store) -> set[str]:
    """Returns the keys of the checkpoints the ledger refers to (every chunk's, and the accepted
    ones retention keeps: the others may have been deleted, docs/worker.md) that are missing or
    damaged on the store."""
    from shardrun.ledger.retention import RetentionRule, kept_checkpoints, run_view

    chunks = ledger.chunks()
    referenced = {(c["checkpoint_key"], c["checkpoint_md5"]) for c in chunks if c["checkpoint_key"]}
    referenced |= {(c["start_checkpoint_key"], c["start_checkpoint_md5"]) for c in chunks if c["start_checkpoint_key"]}
    for r in ledger.runs():
        kept = kept_checkpoints(run_view(ledger, r["name"]), ledger.latest_time(), RetentionRule())
        referenced |= {(k["key"], k["md5"]) for k in ledger.checkpoints(r["name"]) if k["key"] in kept}
    bad = set()
    for key, md5 in referenced:
        try:
            store.get_bytes(key, expected_md5=md5)
        except (IntegrityError, NotFound):
            bad.add(key)
    return bad


def check_finished(ledger: Ledger, store: Store) -> None:
    """Asserts every chunk is done exactly once, every run complete, and every checkpoint the
    ledger refers to intact on the store."""
    chunks = ledger.chunks()
    assert chunks and {c["state"] for c in chunks} == {"done"}
    assert set(accepted_dones(ledger).values()) == {1}
    for run in ledger.runs():
        assert run["steps_done"] == run["steps_total"], run["name"]
    assert all(c["checkpoint_key"] and c["checkpoint_md5"] for c in chunks)
    assert unverified_checkpoints(ledger, store) == set()
    assert ledger.bad_events() == []


def final_weights(ledger: Ledger, store: Store, run: str, folder: Path) -> list[np.ndarray]:
    """Returns the weights in the final checkpoint of `run` that the ledger accepted."""
    from shardrun.train.trainer import read_checkpoint

    last = max(ledger.chunks(run), key=lambda c: c["idx"])
    path = folder / f"final-{run}-{uuid.uuid4().hex[:6]}.ckpt.npz"
    store.download(last["checkpoint_key"], path, expected_md5=last["checkpoint_md5"])
    return read_checkpoint(path)[1]


def straight_weights(job, run: str, folder: Path) -> list[np.ndarray]:
    """Returns the weights of `run` trained in one go from step 0, on the job's shards, with op
    determinism, as no worker is involved."""
    import tensorflow as tf

    from shardrun.train.data import ShardImageSource
    from shardrun.train.trainer import TrainConfig, Trainer

    tf.config.experimental.enable_op_determinism()
    ledger = fold_journal(job, folder / "straight-ledger.db")
    plan = ledger.plan()
    manifest = Manifest.from_json_bytes(home_store(job).get_bytes(plan["manifest_key"], plan["manifest_md5"]))
    for shard in ledger.shards():
        store = open_store(Account(shard["account"], job.account(shard["account"]).store, base_dir=job.base_dir))
        store.download(shard["key"], folder / "straight-shards" / f"{shard['id']}.tar", expected_md5=shard["md5"])
    r = next(r for r in job.runs if r.name == run)
    trainer = Trainer(TrainConfig.from_run(r.to_payload()),
                      ShardImageSource(manifest.images, folder / "straight-shards"), folder / "straight-ckpt")
    trainer.train()
    return [w.numpy() for w in trainer.model.weights]


def same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def run_together(workers: list[Worker], timeout: float = 300.0) -> list[str]:
    """Runs the workers in threads, started at once; returns how each `run()` ended."""
    results: list = [None] * len(workers)
    start = threading.Barrier(len(workers))

    def work(i: int) -> None:
        try:
            start.wait()
            results[i] = workers[i].run()
        except BaseException as e:  # noqa: BLE001 - reported below, in the test's thread
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), f"workers still running after {timeout} s"
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def corrupt(path: Path) -> None:
    """Flips one byte in the middle of a file: same size, other content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# -- the lagging store itself ---------------------------------------------------------------------


def test_the_lagging_store_hides_others_new_objects_from_listings_only():
    inner = MemoryStore(url="memory://lagging-self-test")
    mine = LaggingStore(inner, max_lag_s=0.6, min_lag_s=0.4, seed="mine")
    theirs = LaggingStore(inner, max_lag_s=0.6, min_lag_s=0.4, seed="theirs")
    theirs.put_bytes("j/journal/e1.json", b"{}")
    mine.put_bytes("j/journal/e2.json", b"[]")
    assert mine.list_keys("j/journal/") == ["j/journal/e2.json"]  # its own write shows at once
    assert mine.get_bytes("j/journal/e1.json") == b"{}" and mine.stat("j/journal/e1.json").size == 2
    assert mine.hidden == 1
    time.sleep(0.65)
    assert mine.list_keys("j/journal/") == theirs.list_keys("j/journal/") == ["j/journal/e1.json", "j/journal/e2.json"]


# -- lagging listings: two workers claim at once ---------------------------------------------------


@pytest.mark.slow
def test_lagging_listings_never_let_two_workers_both_complete_a_chunk(tmp_path):
    # One run, so both workers always want the same chunk; epochs=4: 12 steps in 6 chunks.
    job = plan_test_job(tmp_path, [dict(RUN, epochs=4)])
    settings = WorkerSettings(settle_seconds=0.3, heartbeat_seconds=0.0, checkpoint_seconds=3600,
                              checkpoint_steps=1, poll_seconds=0.2)
    min_lag, max_lag = 1.0, 2.0  # longer than the settle: neither sees the other's claim in time
    workers = []
    for i, account in enumerate(("alice", "bob")):
        stores = {a.name: LaggingStore(open_store(Account(a.name, a.store, base_dir=job.base_dir)), max_lag,
                                       min_lag_s=min_lag, seed=f"{account}/{a.name}") for a in job.accounts}
        own = WorkerJob(job.name, stores[job.home.name], stores, tmp_path / account / "ledger.db",
                        tmp_path / account / "cache")
        workers.append(Worker(own, account, NO_LIMIT, settings=settings))
    assert run_together(workers) == ["finished", "finished"]

    assert workers[0].job.home.hidden and workers[1].job.home.hidden  # the lag really hid events
    ledger = fold_journal(job, tmp_path / "all-events.db")
    check_finished(ledger, home_store(job))
    # Both trained chunk 0 in the belief that they owned it; the fold kept the winner's checkpoints
    # and ignored the loser's.
    first = ledger.chunk("a", 0)
    loser = next(w.id for w in workers if w.id != first["owner"])
    written = ledger.db.execute("SELECT worker FROM events WHERE kind = 'checkpoint' AND run = 'a' AND chunk = 0 "
                                "AND generation = ?", [first["generation"]]).fetchall()
    assert {w for (w,) in written} == {first["owner"], loser}
    owners = {c["idx"]: c["owner"] for c in ledger.chunks("a")}
    assert all(k["worker"] == owners[k["chunk"]] for k in ledger.checkpoints("a"))
    # Once the listings catch up, each worker's own ledger is the same as the full fold.
    time.sleep(max_lag)
    for worker in workers:
        worker.sync()
        assert worker.ledger.dump() == ledger.dump()
    assert same_weights(final_weights(ledger, home_store(job), "a", tmp_path),
                        straight_weights(job, "a", tmp_path))


# -- a store that disappears -----------------------------------------------------------------------


def test_a_store_that_disappears_mid_run_is_a_one_line_error_and_the_ledger_survives(tmp_path):
    job = plan_test_job(tmp_path, [RUN], lease_minutes=0.02)
    home_folder = tmp_path / "stores" / "alice"
    seen = {}

    def vanish(run, chunk, step, end, loss):
        if not seen:
            seen["events"] = worker.ledger.event_count()
            home_folder.rename(tmp_path / "stores" / "alice-unmounted")  # Drive unmounted mid-run

    worker = Worker(WorkerJob.from_config(job), "alice", NO_LIMIT, settings=FAST, on_progress=vanish)
    with pytest.raises(StoreError) as error:
        worker.run()
    message = str(error.value)
    assert "\n" not in message and "disappeared" in message and str(home_folder) in message
    assert not home_folder.exists()  # nothing wrote a new, empty store in its place
    worker.ledger.close()
    with sqlite3.connect(job.ledger_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ledger = Ledger.open(job.ledger_path)
    assert ledger.event_count() >= seen["events"] > 1
    assert ledger.chunk("a", 0)["state"] == "running"

    # The drive comes back: a new worker takes the chunk over once the lease ran out, and finishes.
    (tmp_path / "stores" / "alice-unmounted").rename(home_folder)
    again = Worker(WorkerJob.from_config(job), "bob", NO_LIMIT, settings=FAST)
    assert again.run() == "finished"
    full = fold_journal(job, tmp_path / "all-events.db")
    check_finished(full, home_store(job))
    assert full.chunk("a", 0)["generation"] == 1  # the vanished worker's lease expired
    assert same_weights(final_weights(full, home_store(job), "a", tmp_path), straight_weights(job, "a", tmp_path))


# -- damaged checkpoints and caches ----------------------------------------------------------------


def test_a_corrupted_checkpoint_falls_back_to_the_previous_verified_one(tmp_path):
    job = plan_test_job(tmp_path, [RUN])
    first = Worker(WorkerJob.from_config(job), "alice", NO_LIMIT, settings=FAST)
    assert first.run(max_chunks=1) == "max-chunks"
    chunk0 = first.ledger.chunk("a", 0)
    assert chunk0["state"] == "done" and chunk0["end_step"] == 2
    corrupt(tmp_path / "stores" / "alice" / chunk0["checkpoint_key"])  # the step-2 checkpoint

    second = Worker(WorkerJob.from_config(job), "bob", NO_LIMIT, settings=FAST)
    assert second.run() == "finished"
    resumed = next(o for o in second.outcomes if o.chunk == 1)
    assert resumed.start_step == 1  # the step-1 checkpoint of chunk 0, not step 0
    assert any(chunk0["checkpoint_key"] in n and "falling back" in n for n in resumed.notices)
    ledger = fold_journal(job, tmp_path / "all-events.db")
    assert {c["state"] for c in ledger.chunks()} == {"done"}
    assert unverified_checkpoints(ledger, home_store(job)) == {chunk0["checkpoint_key"]}  # only the damaged one
    assert same_weights(final_weights(ledger, home_store(job), "a", tmp_path), straight_weights(job, "a", tmp_path))


def test_a_corrupted_cached_shard_is_fetched_again(tmp_path):
    job = plan_test_job(tmp_path, [RUN])
    first = Worker(WorkerJob.from_config(job), "alice", NO_LIMIT, settings=FAST)
    assert first.run(max_chunks=1) == "max-chunks"
    shards = first.ledger.shards()
    cached = [WorkerJob.from_config(job).cache_dir / "shards" / f"{s['id']}.tar" for s in shards]
    assert cached and all(digest_file(p).md5 == s["md5"] for p, s in zip(cached, shards))
    # They were fetched before the claim, so a long download never eats into the claim's lease.
    (claim_time,) = first.ledger.db.execute("SELECT server_time FROM events WHERE kind = 'claim'").fetchone()
    assert max(p.stat().st_mtime for p in cached) <= claim_time
    for path in cached:
        corrupt(path)
    # ...and a stale partial download as long as the shard, which a resume alone cannot repair.
    cached[0].with_name(cached[0].name + ".part").write_bytes(b"\0" * shards[0]["size"])

    second = Worker(WorkerJob.from_config(job), "bob", NO_LIMIT, settings=FAST)
    assert second.run() == "finished"
    assert all(digest_file(p).md5 == s["md5"] for p, s in zip(cached, shards))
    assert not cached[0].with_name(cached[0].name + ".part").exists()
    ledger = fold_journal(job, tmp_path / "all-events.db")
    check_finished(ledger, home_store(job))
    assert same_weights(final_weights(ledger, home_store(job), "a", tmp_path), straight_weights(job, "a", tmp_path))


# -- clocks hours off ------------------------------------------------------------------------------


class SkewedClock:
    """This machine's clock, `skew` seconds off the store's; sleeping on it lets the store's time pass."""

    def __init__(self, store_clock: FakeClock, skew: float):
        self.store_clock = store_clock
        self.skew = skew

    def now(self) -> float:
        return self.store_clock.now() + self.skew

    def monotonic(self) -> float:
        return self.store_clock.monotonic()

    def sleep(self, seconds: float) -> None:
        self.store_clock.sleep(seconds)

    def wait(self, event, seconds: float) -> bool:
        return self.store_clock.wait(event, seconds)


@pytest.mark.parametrize("skew_hours", [5.0, -5.0])
def test_a_clock_hours_off_judges_leases_only_in_the_store_time(tmp_path, skew_hours):
    tag = f"skew-{uuid.uuid4().hex[:8]}"
    write_images(tmp_path / "images", 12, size=(48, 40))
    text = job_text(runs=[RUN], reserve_mb=0, lease_minutes=1).replace("local://stores/", f"memory://{tag}-")
    (tmp_path / "job.toml").write_text(text)
    job = load_job(tmp_path / "job.toml")
    plan_job(job, scan_workers=1)
    server = FakeClock(time.time() + 60)  # the store's time, after the plan's real-time events
    for account in ("alice", "bob"):
        MemoryStore.named(f"{tag}-{account}").clock = server
    journal = Journal(MemoryStore.named(f"{tag}-alice"), job.name, server)
    journal.append("claim", "ghost", "a", 0, 0)  # another worker owns chunk 0 of the only run

    worker = Worker(WorkerJob.from_config(job), "bob", NO_LIMIT, settings=FAST,
                    clock=SkewedClock(server, skew_hours * 3600))

    def chunk0():
        worker.sync()
        c = worker.ledger.chunk("a", 0)
        return c["state"], c["owner"], c["generation"]

    def expiries():
        return worker.ledger.db.execute("SELECT COUNT(*) FROM events WHERE kind = 'expire' AND worker = ?",
                                        [worker.id]).fetchone()[0]

    server.advance(30)
    assert worker.loop() == "idle"  # knowing no store time yet, it may try; the fold refuses
    assert chunk0() == ("running", "ghost", 0)
    journal.append("heartbeat", "ghost", "a", 0, 0, {"step": 1})
    tried = expiries()
    server.advance(50)  # 50 s of silence, lease 60 s: alive
    assert worker.loop() == "idle"
    assert chunk0() == ("running", "ghost", 0) and expiries() == tried  # it did not even try
    server.advance(15)  # 65 s of silence: dead
    assert worker.loop() == "trained"
    assert chunk0() == ("done", worker.id, 1) and expiries() == tried + 1
    assert worker.outcomes[-1].result == "done"


# -- one account name, two workers -----------------------------------------------------------------


def test_two_workers_under_one_account_name_are_two_identities_and_corrupt_nothing(tmp_path):
    job = plan_test_job(tmp_path, [RUN, dict(RUN, name="b", model="srcnn-915")])
    twins = [Worker(WorkerJob.from_config(job), "alice", NO_LIMIT, settings=FAST) for _ in range(2)]
    assert twins[0].id != twins[1].id and all(t.id.startswith("alice-") for t in twins)
    assert run_together(twins) == ["finished", "finished"]
    ledger = fold_journal(job, tmp_path / "all-events.db")
    check_finished(ledger, home_store(job))
    claimed = {w for (w,) in ledger.db.execute("SELECT worker FROM events WHERE kind = 'claim'")}
    assert claimed == {t.id for t in twins}
    for twin in twins:
        twin.sync()
        assert twin.ledger.dump() == ledger.dump()
    for run in ("a", "b"):
        assert same_weights(final_weights(ledger, home_store(job), run, tmp_path),
                            straight_weights(job, run, tmp_path))


# -- a worker's own events, hidden from its own listings -------------------------------------------


def test_a_worker_owns_its_claim_at_once_though_the_listing_hides_it(tmp_path):
    job = plan_test_job(tmp_path, [RUN])
    stores = {a.name: open_store(Account(a.name, a.store, base_dir=job.base_dir)) for a in job.accounts}
    # Its own writes stay out of its own listings for an hour: only what it folded itself tells it.
    home = LaggingStore(stores[job.home.name], 3600, min_lag_s=3600, lag_own_writes=True)
    stores[job.home.name] = home
    worker = Worker(WorkerJob(job.name, home, stores, job.ledger_path, tmp_path / "cache"), "alice", NO_LIMIT,
                    settings=FAST)

    def held_while_idle() -> list:
        # What a reader without lag sees: a chunk running with this worker as owner, while it trains nothing.
        full = fold_journal(job, tmp_path / f"reader-{uuid.uuid4().hex[:6]}.db")
        return [(c["run"], c["idx"]) for c in full.chunks() if c["state"] == "running" and c["owner"] == worker.id]

    for chunk in range(3):  # 6 steps in 3 chunks
        assert worker.loop() == "trained"
        assert worker.outcomes[-1].chunk == chunk and worker.outcomes[-1].result == "done"
        assert held_while_idle() == []
    assert worker.loop() == "finished"
    assert home.hidden  # the lag really hid its own events
    ledger = fold_journal(job, tmp_path / "all-events.db")
    check_finished(ledger, home_store(job))
    assert same_weights(final_weights(ledger, home_store(job), "a", tmp_path), straight_weights(job, "a", tmp_path))


def test_a_chunk_the_worker_owns_but_does_not_train_is_handed_back(tmp_path):
    job = plan_test_job(tmp_path, [RUN])
    worker = Worker(WorkerJob.from_config(job), "alice", NO_LIMIT, settings=FAST)
    # A claim of this worker it never heard back about (the create's answer was lost) surfaces.
    journal = Journal(home_store(job), job.name)
    journal.plan = worker.ledger.plan()["id"]
    journal.append("claim", worker.id, "a", 0, 0)
    assert worker.loop() == "trained"  # it handed chunk 0 back (generation 1), claimed it again and trained it
    assert [(o.chunk, o.generation, o.result) for o in worker.outcomes] == [(0, 1, "done")]
    ledger = fold_journal(job, tmp_path / "all-events.db")
    assert ledger.chunk("a", 0)["state"] == "done"


# -- checkpoints that cannot be resumed ------------------------------------------------------------


def _ghost_attempt(job, ledger: Ledger, chunk: int, files: list[tuple[int, Path]]) -> None:
    """Another worker claims `chunk`, uploads `files` as its checkpoints (step, file) with their own
    md5 (damaged before upload, or of another model: the store serves them intact) and yields."""
    home = home_store(job)
    journal = Journal(home, job.name)
    journal.plan = ledger.plan()["id"]
    ghost = "carol-elsewhere-1-abcdef"
    journal.append("claim", ghost, "a", chunk, 0)
    for step, path in files:
        key = paths.checkpoint_key(job.name, "a", chunk, 0, ghost, step)
        stat = home.put_file(key, path)
        journal.append("checkpoint", ghost, "a", chunk, 0, {"step": step, "key": key, "md5": stat.md5})
    journal.append("yield", ghost, "a", chunk, 0, {"step": files[-1][0], "reason": "stopped"})


def _first_chunk(job, tmp_path) -> tuple[Ledger, Path]:
    """Trains chunk 0 (checkpoints at steps 1 and 2); returns the ledger and a copy of the step-2 file."""
    first = Worker(WorkerJob.from_config(job), "alice", NO_LIMIT, settings=FAST)
    assert first.run(max_chunks=1) == "max-chunks"
    chunk0 = first.ledger.chunk("a", 0)
    good = tmp_path / "step-2.ckpt.npz"
    home_store(job).download(chunk0["checkpoint_key"], good, expected_md5=chunk0["checkpoint_md5"])
    return first.ledger, good


def test_a_chunk_whose_newest_two_checkpoints_are_corrupt_resumes_from_the_third(tmp_path):
    job = plan_test_job(tmp_path, [RUN])
    ledger, good = _first_chunk(job, tmp_path)
    truncated, flipped = tmp_path / "step-4.ckpt.npz", tmp_path / "step-3.ckpt.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    flipped.write_bytes(good.read_bytes())
    corrupt(flipped)
    _ghost_attempt(job, ledger, 1, [(3, flipped), (4, truncated)])  # chunk 1 would resume at step 4

    second = Worker(WorkerJob.from_config(job), "bob", NO_LIMIT, settings=FAST)
    assert second.run() == "finished"
    resumed = next(o for o in second.outcomes if o.chunk == 1)
    assert (resumed.start_step, resumed.result) == (2, "done")  # steps 4 and 3 skipped, step 2 restored
    skipped = [n for n in resumed.notices if "falling back" in n]
    assert len(skipped) == 2 and "step-000000000004" in skipped[0] and "step-000000000003" in skipped[1]
    assert "not a zip file" in skipped[0] and "CRC" in skipped[1]  # what was wrong with each, in one line
    full = fold_journal(job, tmp_path / "all-events.db")
    assert {c["state"] for c in full.chunks()} == {"done"}
    assert same_weights(final_weights(full, home_store(job), "a", tmp_path), straight_weights(job, "a", tmp_path))


def test_a_checkpoint_of_another_model_makes_no_worker_crash(tmp_path):
    import json

    from shardrun.train.trainer import TrainConfig, Trainer

    job = plan_test_job(tmp_path, [RUN])
    ledger, _ = _first_chunk(job, tmp_path)
    probe = Worker(WorkerJob.from_config(job), "bob", NO_LIMIT, settings=FAST)
    other = Trainer(TrainConfig.from_run({**json.loads(ledger.run("a")["config"]), "model": "srcnn-915"}),
                    probe._image_source(), tmp_path / "other-model")
    other.train(3)
    _ghost_attempt(job, ledger, 1, [(3, other.save_checkpoint().path)])  # srcnn's step 3, for espcn's run

    assert probe.run() == "finished"
    resumed = next(o for o in probe.outcomes if o.chunk == 1)
    assert (resumed.start_step, resumed.result) == (2, "done")
    assert any("falling back" in n and "SRCNN" in n.upper() for n in resumed.notices), resumed.notices
    full = fold_journal(job, tmp_path / "all-events.db")
    check_finished(full, home_store(job))
    assert same_weights(final_weights(full, home_store(job), "a", tmp_path), straight_weights(job, "a", tmp_path))


def test_a_chunk_with_no_usable_checkpoint_fails_with_the_reason_and_the_worker_moves_on(tmp_path):
    from shardrun.status.report import job_status

    job = plan_test_job(tmp_path, [RUN])
    ledger, _ = _first_chunk(job, tmp_path)
    for ckpt in ledger.checkpoints("a"):  # steps 2 and 1: both damaged on the store
        corrupt(tmp_path / "stores" / "alice" / ckpt["key"])

    worker = Worker(WorkerJob.from_config(job), "bob", NO_LIMIT, settings=FAST)
    assert worker.loop() == "failed"  # not trained again from step 0: that would redo chunk 0 unasked
    (outcome,) = worker.outcomes
    assert (outcome.chunk, outcome.result, outcome.step) == (1, "failed", 2)
    assert worker.loop() == "idle"  # it does not claim that chunk again; nothing else is ready
    assert len(worker.outcomes) == 1
    full = fold_journal(job, tmp_path / "all-events.db")
    chunk = full.chunk("a", 1)
    assert (chunk["state"], chunk["generation"], chunk["owner"]) == ("ready", 1, None)
    assert "no checkpoint of run a at or before step 2 can be restored" in chunk["last_error"]
    assert "\n" not in chunk["last_error"]
    (fail,) = full.db.execute("SELECT payload FROM events WHERE kind = 'fail'").fetchall()
    assert chunk["last_error"] in fail[0]
    notes = job_status(job)["notes"]
    assert any(n.startswith("run a chunk 1 failed: no checkpoint of run a") for n in notes), notes

"""The worker in-process: claims, the chain of chunks, yield with the exact step, exact results."""

from __future__ import annotations

import json
import numpy as np
import pytest

from tests.conftest import job_text, write_images
from shardrun.clock import FakeClock, SystemClock
from shardrun.config.job import load_job
from shardrun.plan.job import plan_job
from shardrun.ledger.db import Ledger
from shardrun.config.platforms import load_platforms
from shardrun.session import Session, detect_session
from shardrun.plan.shards import Manifest
from shardrun.storage.local import LocalStore
from shardrun.worker import Worker, WorkerError, WorkerJob, WorkerSettings

FAST = WorkerSettings(settle_seconds=0.01, heartbeat_seconds=0.0, checkpoint_seconds=3600, checkpoint_steps=1,
                      poll_seconds=0.01)
NO_LIMIT = Session("local", 0.0, None, "test")
# 12 images, 4 patches each, batches of 16: 3 steps per epoch, 6 steps per run, chunks of 2 steps
RUN = dict(scale=2, channels=1, epochs=2, batch_size=16, patch_size=16, patches_per_image=4,
           patches_per_second=0.000943, seed=3)


@pytest.fixture
def planned(tmp_path):
    write_images(tmp_path / "images", 12, size=(48, 40))
    # Run b trains on a schedule with clipping and L1: exact across chunks too.
    runs = [dict(name="a", model="srcnn-915", **RUN),
            dict(name="b", model="espcn", loss="l1", clip_norm=0.5,
                 schedule={"kind": "cosine", "warmup_steps": 2, "min_lr": 1e-5}, **RUN)]
    (tmp_path / "job.toml").write_text(job_text(runs=runs, reserve_mb=0))
    job = load_job(tmp_path / "job.toml")
    plan_job(job, scan_workers=1)
    return job


def new_worker(job, account="alice", **kwargs):
    return Worker(WorkerJob.from_config(job), account, NO_LIMIT, settings=FAST, **kwargs)


def final_weights(job, run):
    from shardrun.train.trainer import read_checkpoint

    ledger = Ledger.open(job.ledger_path)
    last = max(ledger.chunks(run), key=lambda c: c["idx"])
    path = job.base_dir / "final.ckpt"
    LocalStore(job.base_dir / "stores" / job.home.name).download(last["checkpoint_key"], path,
                                                                 expected_md5=last["checkpoint_md5"])
    path.rename(job.base_dir / f"{run}.ckpt.npz")
    return read_checkpoint(job.base_dir / f"{run}.ckpt.npz")[1]


def straight_weights(job, run, tmp_path):
    """Returns the weights of the run trained in one go, with no chunks and no resume."""
    import tensorflow as tf

    from shardrun.train.data import ShardImageSource
    from shardrun.train.trainer import TrainConfig, Trainer

    tf.config.experimental.enable_op_determinism()
    ledger = Ledger.open(job.ledger_path)
    plan = ledger.plan()
    home = LocalStore(job.base_dir / "stores" / job.home.name)
    manifest = Manifest.from_json_bytes(home.get_bytes(plan["manifest_key"]))
    for shard in ledger.shards():
        LocalStore(job.base_dir / "stores" / shard["account"]).download(
            shard["key"], tmp_path / "straight" / f"{shard['id']}.tar")
    config = next(r for r in job.runs if r.name == run)
    trainer = Trainer(TrainConfig.from_run(config.to_payload()),
                      ShardImageSource(manifest.images, tmp_path / "straight"), tmp_path / "straight-ckpt")
    trainer.train()
    return [w.numpy() for w in trainer.model.weights]


def test_one_worker_trains_the_whole_job_chunk_after_chunk(planned, tmp_path):
    worker = new_worker(planned)
    assert worker.run() == "finished"
    ledger = Ledger.open(planned.ledger_path)
    assert all(c["state"] == "done" for c in ledger.chunks())
    assert [(r["steps_done"], r["steps_total"]) for r in ledger.runs()] == [(6, 6), (6, 6)]
    assert [(o.run, o.chunk, o.start_step, o.step, o.result) for o in worker.outcomes if o.run == "a"] == [
        ("a", 0, 0, 2, "done"), ("a", 1, 2, 4, "done"), ("a", 2, 4, 6, "done")]
    home = LocalStore(planned.base_dir / "stores" / "alice")
    for chunk in ledger.chunks():
        assert home.stat(chunk["checkpoint_key"]).md5 == chunk["checkpoint_md5"]
    for c in ledger.chunks():
        if c["idx"] > 0:  # each chunk of the chain starts from the previous one's final checkpoint
            prev = ledger.chunk(c["run"], c["idx"] - 1)
            assert c["start_checkpoint_key"] == prev["checkpoint_key"]
    for run in ("a", "b"):
        chunked = final_weights(planned, run)
        straight = straight_weights(planned, run, tmp_path)
        assert len(chunked) == len(straight)
        assert max(float(np.max(np.abs(x - y))) for x, y in zip(chunked, straight)) == 0.0
    # Heartbeats carry the scheduled learning rate, and status shows the latest.
    from shardrun.status.report import job_status

    rates = {r["name"]: r["learning_rate"] for r in job_status(planned)["runs"]}
    assert rates["a"] == {"current": 1e-3, "step": 6}
    assert rates["b"]["step"] == 6 and rates["b"]["current"] == pytest.approx(1e-5)


def test_a_stop_yields_the_exact_step_and_another_worker_continues(planned, tmp_path):
    first = new_worker(planned)
    first.on_progress = lambda run, chunk, step, end, loss: first.request_stop() if step >= 1 else None
    assert first.run() == "stopped"
    (outcome,) = first.outcomes
    assert outcome.result == "yield" and outcome.step == 1
    ledger = Ledger.open(planned.ledger_path)
    chunk = ledger.chunk(outcome.run, 0)
    assert (chunk["state"], chunk["generation"], chunk["owner"], chunk["step_reached"]) == ("ready", 1, None, 1)
    ledger.sync(first.journal)
    assert ledger.worker(first.id)["left_reason"] == "stopped"  # it said it left: status shows it ended
    second = new_worker(planned, account="bob")
    assert second.run() == "finished"
    resumed = next(o for o in second.outcomes if o.run == outcome.run and o.chunk == 0)
    assert (resumed.start_step, resumed.step, resumed.result) == (1, 2, "done")
    assert max(float(np.max(np.abs(x - y))) for x, y in
               zip(final_weights(planned, outcome.run), straight_weights(planned, outcome.run, tmp_path))) == 0.0


def test_an_earlier_claim_wins_and_the_later_worker_backs_off(planned):
    owner, late = new_worker(planned), new_worker(planned, account="bob")
    owner.sync()
    for chunk in owner.ledger.chunks():
        if chunk["state"] == "ready":
            owner._write("claim", chunk["run"], chunk["idx"], chunk["generation"])
    assert late.loop() == "idle"  # both ready chunks are taken by an earlier claim
    owner.sync()
    assert {c["owner"] for c in owner.ledger.chunks() if c["state"] == "running"} == {owner.id}




def test_unknown_account_and_unplanned_job_are_clear_errors(planned, tmp_path):
    with pytest.raises(WorkerError, match="--account 'carol' is not an account of job 'test-job'; it has: alice, bob"):
        new_worker(planned, account="carol")
    (tmp_path / "other").mkdir()
    write_images(tmp_path / "other" / "images", 3)
    (tmp_path / "other" / "job.toml").write_text(job_text(name="never-planned"))
    with pytest.raises(WorkerError, match="job 'never-planned' has no plan .* run `shardrun plan` first"):
        new_worker(load_job(tmp_path / "other" / "job.toml"))


def test_a_worker_started_from_the_home_url_finds_the_job(planned):
    url = f"local://{planned.base_dir / 'stores' / 'alice'}/{planned.name}"
    job = WorkerJob.from_home_url(url, cache_root=planned.base_dir / "cache-root")
    worker = Worker(job, "bob", NO_LIMIT, settings=FAST)
    assert set(job.stores) == {"alice", "bob"}
    assert worker.loop() == "trained"


def test_a_session_too_close_to_its_end_claims_nothing(planned):
    clock = SystemClock()
    ending = Session("colab", clock.now() - 12 * 3600, clock.now() + 5, "test")
    worker = Worker(WorkerJob.from_config(planned), "alice", ending, settings=FAST)
    assert worker.run() == "deadline"
    assert worker.outcomes == []



def test_training_and_upload_times_are_read_on_the_injected_clock(planned):
    clock = FakeClock()
    job = WorkerJob.from_config(planned)
    put_file = job.home.put_file

    def slow_put_file(key, path, **kwargs):  # each checkpoint upload "takes" 4 s
        clock.advance(4)
        return put_file(key, path, **kwargs)

    job.home.put_file = slow_put_file
    settings = WorkerSettings(**{**FAST.__dict__, "min_upload_margin_s": 1.0})
    worker = Worker(job, "alice", NO_LIMIT, settings=settings, clock=clock)
    assert worker.loop() == "trained"
    (outcome,) = worker.outcomes
    # A chunk of 2 steps, a checkpoint after each: two uploads, all the time that passed.
    assert (outcome.step - outcome.start_step, outcome.train_seconds) == (2, 8.0)
    # The last upload's speed sets the margin kept for the final one: three uploads' time and 5 s.
    assert worker._upload_margin() == pytest.approx(3 * 4 + 5)

def test_session_deadlines_come_from_the_platform_and_the_budget():
    platforms = load_platforms()
    clock = SystemClock()
    now = clock.now()
    colab = detect_session(platforms, "colab-free", environ={"COLAB_RELEASE_TAG": "x"}, uptime=3600, clock=clock)
    assert colab.platform == "colab" and colab.deadline == pytest.approx(now - 3600 + 12 * 3600, abs=2)
    kaggle = detect_session(platforms, "kaggle", environ={"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, uptime=0)
    assert kaggle.deadline == pytest.approx(now + 12 * 3600, abs=2)
    local = detect_session(platforms, "local", environ={})
    assert local.deadline is None
    budget = detect_session(platforms, "colab-free", budget_hours=2, environ={"COLAB_GPU": "1"}, uptime=0)
    assert budget.deadline == pytest.approx(now + 7200, abs=2) and "--budget" in budget.source


def test_a_worker_trains_a_runs_own_network_from_the_file_the_plan_uploaded(tmp_path):
    from tests.plan.test_job import NET

    write_images(tmp_path / "images", 12, size=(48, 40))
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "mynet.py").write_text(NET)
    runs = [dict(name="own", model="file:nets/mynet.py:build", **{**RUN, "epochs": 1})]
    (tmp_path / "job.toml").write_text(job_text(runs=runs, reserve_mb=0))
    job = load_job(tmp_path / "job.toml")
    plan_job(job, scan_workers=1)
    (tmp_path / "nets" / "mynet.py").write_text("raise SystemExit('the local copy is not what workers load')")
    worker = new_worker(job)
    assert worker.run() == "finished"
    from shardrun.train.trainer import read_checkpoint

    ledger = Ledger.open(job.ledger_path)
    last = max(ledger.chunks("own"), key=lambda c: c["idx"])
    path = tmp_path / "final.ckpt.npz"
    LocalStore(tmp_path / "stores" / "alice").download(last["checkpoint_key"], path)
    meta = read_checkpoint(path)[0]
    assert meta["step"] == 3 and meta["model"]["name"] == "file:nets/mynet.py:build"
    assert meta["model"]["sha256"] == json.loads(ledger.run("own")["config"])["files"]["network"]["sha256"]

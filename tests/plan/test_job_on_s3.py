"""A job on S3 buckets (moto's standalone server on loopback): plan, two workers and status, a
job whose accounts are of mixed kinds (a local home with an S3 account), and the bad input."""

from __future__ import annotations

import pytest

from shardrun.accounts import check_accounts
from shardrun.config.job import load_job
from shardrun.errors import PlanError
from shardrun.ledger.db import Ledger
from shardrun.plan.job import plan_job
from shardrun.session import Session
from shardrun.status.report import job_status
from shardrun.worker import Worker, WorkerJob, WorkerSettings
from tests.conftest import job_text, write_images

FAST = WorkerSettings(settle_seconds=0.01, heartbeat_seconds=0.0, checkpoint_seconds=3600, checkpoint_steps=1,
                      poll_seconds=0.01)
NO_LIMIT = Session("local", 0.0, None, "test")
# 8 images, 4 patches each, batches of 16: 2 steps per epoch, one epoch: 2 steps, chunks of 1 step
TINY = dict(name="a", model="espcn", scale=2, channels=1, epochs=1, batch_size=16, patch_size=16,
            patches_per_image=4, patches_per_second=0.000943 * 2, seed=3)


def s3_account(name, bucket, endpoint, prefix="team", **keys):
    return dict(name=name, store=f"s3://{bucket}/{prefix}", endpoint_url=endpoint, quota_gb=1, **keys)


def write_job(tmp_path, accounts, name="s3job", images=8, size=(48, 40), **job_keys):
    write_images(tmp_path / "images", images, size=size)
    (tmp_path / "job.toml").write_text(job_text(name, accounts=accounts, runs=[TINY], reserve_mb=0,
                                                platform=None, **job_keys))
    return load_job(tmp_path / "job.toml")


def new_worker(job, account):
    return Worker(WorkerJob.from_config(job), account, NO_LIMIT, settings=FAST)


def test_plan_two_workers_and_status_on_s3(make_bucket, s3_env, tmp_path):
    # Random pixels: ~480 kB an image, two a 1 MB shard: four shards, spread over both buckets.
    job = write_job(tmp_path, [s3_account("alice", make_bucket(), s3_env),
                               s3_account("bob", make_bucket(), s3_env)],
                    size=(400, 400), shard_size_mb=1)
    report = plan_job(job, scan_workers=1)
    assert report.written
    assert {s["account"] for s in report.shards} == {"alice", "bob"}
    stores = {a.name: job.open_store(a) for a in job.accounts}
    for shard in report.shards:
        assert stores[shard["account"]].stat(shard["key"]).md5 == shard["md5"]
    first = new_worker(job, "alice")
    first.on_progress = lambda run, chunk, step, end, loss: first.request_stop() if step >= 1 else None
    assert first.run() == "stopped"
    second = new_worker(job, "bob")
    assert second.run() == "finished"
    ledger = Ledger.open(job.ledger_path)
    assert all(c["state"] == "done" for c in ledger.chunks())
    for chunk in ledger.chunks():  # checkpoints on the home bucket, whole
        assert stores["alice"].stat(chunk["checkpoint_key"]).md5 == chunk["checkpoint_md5"]
    status = job_status(job)
    assert [(r["steps_done"], r["steps_total"]) for r in status["runs"]] == [(2, 2)]
    used = {a["name"]: a for a in status["accounts"]}
    assert used["bob"]["used_bytes"] == stores["bob"].usage().used_bytes > 0


def test_a_local_home_with_an_s3_account_plans_and_trains(make_bucket, s3_env, tmp_path):
    bucket = make_bucket()
    job = write_job(tmp_path, [dict(name="home", store="local://stores/home", quota_gb=1),
                               s3_account("cloud", bucket, s3_env)], name="mixed",
                    size=(400, 400), shard_size_mb=1)
    report = plan_job(job, scan_workers=1)
    assert {s["account"] for s in report.shards} == {"home", "cloud"}
    assert new_worker(job, "cloud").run() == "finished"
    assert all(c["state"] == "done" for c in Ledger.open(job.ledger_path).chunks())
    infos = {i.name: i for i in check_accounts(job)}
    assert all(i.ok for i in infos.values()), [i.problem for i in infos.values()]
    assert infos["cloud"].identity == f"s3 bucket {bucket}/team ({s3_env})"
    assert infos["cloud"].limit_bytes == 1_000_000_000 and infos["cloud"].used_bytes > 0
    assert infos["home"].identity is None


def test_missing_buckets_are_one_line_per_account_from_check_and_plan(make_bucket, s3_env, tmp_path):
    job = write_job(tmp_path, [s3_account("alice", "no-such-bucket-a", s3_env),
                               s3_account("bob", "no-such-bucket-b", s3_env),
                               s3_account("carol", make_bucket(), s3_env)])
    problems = {i.name: i.problem for i in check_accounts(job)}
    assert problems["carol"] is None
    for name, bucket in (("alice", "no-such-bucket-a"), ("bob", "no-such-bucket-b")):
        assert problems[name] == (f"s3://{bucket}/team: the bucket {bucket!r} does not exist at {s3_env}; "
                                  "create it or correct the store URL")
    with pytest.raises(PlanError) as raised:
        plan_job(job, scan_workers=1)
    lines = str(raised.value).splitlines()
    assert [line for line in lines if "does not exist" in line] == [
        f"  - account alice: {problems['alice']}", f"  - account bob: {problems['bob']}"]


def test_missing_credentials_give_the_s3_sign_in_hint(make_bucket, s3_env, monkeypatch, tmp_path):
    job = write_job(tmp_path, [s3_account("alice", make_bucket(), s3_env)])
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (info,) = check_accounts(job)
    assert "no AWS credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in info.problem
    assert "\n" not in info.problem


def test_plan_refuses_a_prefix_that_holds_another_jobs_objects(make_bucket, s3_env, tmp_path):
    bucket = make_bucket()
    other = write_job(tmp_path / "other", [s3_account("alice", bucket, s3_env, prefix="team/otherjob")],
                      name="otherjob")
    plan_job(other, scan_workers=1)
    # This job's account points inside the other job's folder (s3://bucket/team/otherjob/...).
    mine = write_job(tmp_path / "mine", [s3_account("alice", bucket, s3_env, prefix="team/otherjob/otherjob")],
                     name="mine")
    with pytest.raises(PlanError, match=r"account alice: s3://.*/team/otherjob/otherjob already holds"):
        plan_job(mine, scan_workers=1)
    # Beside it, in a prefix of its own or next to other jobs' folders, it plans.
    beside = write_job(tmp_path / "beside", [s3_account("alice", bucket, s3_env, prefix="team/otherjob")],
                       name="beside")
    assert plan_job(beside, scan_workers=1).written


def test_a_protocol_fsspec_does_not_know_is_one_line(tmp_path):
    from shardrun.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        write_job(tmp_path, [dict(name="a", store="fsspec://nosuchproto/x/y", quota_gb=1)])
    assert [p for p in raised.value.problems if "nosuchproto" in p] == [
        "accounts[0].store 'fsspec://nosuchproto/x/y': fsspec knows no protocol 'nosuchproto'; "
        "see fsspec.available_protocols() for the ones it does"]

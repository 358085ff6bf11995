"""End to end on the Drive emulator: a job planned across three Drive accounts, trained by workers
while Drive misbehaves, and finished with nothing lost.

Each account's Drive (the emulator's quota) and its share in the job file (quota_gb less reserve_mb)
are too small for the dataset, so the plan must use all three. Faults then fire while workers run:
429 and 403 rate-limit bursts, 500s and 503s, a connection dropped in the middle of a checkpoint's
resumable upload, an upload session that expires, a create whose answer is lost (a duplicate file),
short ranged downloads, and listings that lag behind writes. One worker dies mid-chunk without a
word (its lease runs out), a second takes over and is stopped mid-chunk (it yields the exact step,
as SIGTERM makes it), and a third, started as `shardrun worker` on the command line, finishes.
The final weights must equal those of one straight, uninterrupted run, and `status` must show
each account's usage exactly as the emulator counts it.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from shardrun.cli.main import main
from shardrun.config.job import MB, load_job
from shardrun.journal import Journal
from shardrun.ledger.db import Ledger
from shardrun.config.platforms import load_platforms
from shardrun.status.report import job_status
from shardrun.session import detect_session
from shardrun.plan.shards import Manifest
from shardrun.worker import Worker, WorkerJob, WorkerSettings
from tests.conftest import job_text, write_images
from tests.drive_accounts import new_drive_account

# 16 random 800x800 photos (~1.9 MB each, PNG cannot shrink noise): ~31 MB in 8 shards of 2.
IMAGES, IMAGE_SIDE, SHARD_MB = 16, 800, 4
# Every account: 24 MB of Drive, 12 MB of it kept back (reserve) for checkpoints and the journal,
# so 12 MB (3 shards) of shards each: two accounts hold 6 shards, the dataset needs all three.
QUOTA_BYTES, RESERVE_MB = 24 * MB, 12
# The home also keeps room for the checkpoints retention holds (plan/space.py: ~22 MB of these
# widened ones): with twice the Drive it still takes 3 shards, so no two accounts hold the data.
QUOTAS = {"alice": 2 * QUOTA_BYTES, "bob": QUOTA_BYTES, "carol": QUOTA_BYTES}
# ESPCN widened so a checkpoint (weights + Adam state) passes 1 MiB, the job's upload chunk, and
# goes up in a resumable session of two chunks; 16 images x 4 patches / 16 = 4 steps an epoch,
# 3 epochs = 12 steps; on colab-free 8000 s a step (patches_per_second 0.002) cuts 4-step chunks.
RUN = dict(name="x2", model="espcn", scale=2, channels=1, epochs=3, batch_size=16, patch_size=16,
           patches_per_image=4, patches_per_second=0.002, seed=5, options={"n1": 128, "n2": 96})
ACCOUNTS = ("alice", "bob", "carol")  # alice is the home: journal, manifest and checkpoints


def write_job_file(folder: Path, emu, accounts: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.toml"
    path.write_text(job_text(
        "e2e", platform="colab-free", shard_size_mb=SHARD_MB, reserve_mb=RESERVE_MB, lease_minutes=0.03,
        drive_root_url=emu.root_url, drive_chunk_mib=1,
        accounts=[dict(name=name, store=f"drive://{accounts[name].folder}", token=accounts[name].token,
                       quota_gb=QUOTAS[name] / 1e9) for name in ACCOUNTS],
        runs=[RUN]))
    return path


def worker_as_the_cli_builds_it(job_file: Path, account: str, settings: WorkerSettings, **hooks) -> Worker:
    """A worker made as `shardrun worker JOBFILE --account NAME` makes it (cli.worker), with the
    given intervals and test hooks; each person has a machine (a job file, ledger and cache) of their own."""
    config = load_job(job_file)
    session = detect_session(load_platforms(), config.platform, None, environ={})
    return Worker(WorkerJob.from_config(config, account), account, session, settings=settings, **hooks)


class Died(Exception):
    """The worker's process ends here, writing nothing more (as a SIGKILL or a lost VM would)."""


def switch_faults_on(emu) -> None:
    faults = emu.faults
    faults.add("rate_limit", times=2, methods="files.list")  # a 429 burst: one listing fails twice
    faults.add("user_rate_limit", times=1, methods="files.create:multipart")
    faults.add("rate_limit_403", times=1, methods="files.get")
    faults.add("backend_error", times=1, methods="files.get:media")
    faults.add("unavailable", times=1, methods="files.create:resumable")
    faults.add("bad_gateway", times=1, methods="about.get")
    # Only checkpoints pass the 1 MiB chunk now: the first chunk of one drops after 300 kB...
    faults.add("drop", times=1, methods="upload.chunk", keep=300_000)
    # ...and a later upload session expires under its writer (a new session starts from byte 0).
    faults.add("expire_session", times=1, methods="upload.chunk", after=2)
    # A journal event is stored but the answer is lost: the retry makes a duplicate file.
    faults.add("drop", times=1, methods="files.create:multipart", processed=True, after=3)
    faults.add("partial_range", times=4, methods="files.get:media", serve=200_000)
    faults.listing_lag = 0.3  # settle_seconds below is longer, as the CLI's help advises


def fold_journal(job, path: Path) -> Ledger:
    """A new ledger folded from every event on the home Drive, as a newcomer sees the job."""
    ledger = Ledger.open(path)
    ledger.sync(Journal(job.open_store(job.home), job.name))
    return ledger


def straight_weights(job, ledger: Ledger, folder: Path) -> list[np.ndarray]:
    """Weights of the run trained in one go from step 0 on the job's shards, with no worker."""
    import tensorflow as tf

    from shardrun.train.data import ShardImageSource
    from shardrun.train.trainer import TrainConfig, Trainer

    tf.config.experimental.enable_op_determinism()
    plan = ledger.plan()
    home = job.open_store(job.home)
    manifest = Manifest.from_json_bytes(home.get_bytes(plan["manifest_key"], plan["manifest_md5"]))
    for shard in ledger.shards():
        job.open_store(job.account(shard["account"])).download(
            shard["key"], folder / "shards" / f"{shard['id']}.tar", expected_md5=shard["md5"])
    r = job.runs[0]
    trainer = Trainer(TrainConfig(r.model, r.scale, r.channels, r.options, r.patch_size, r.batch_size,
                                  r.patches_per_image, r.epochs, r.seed, r.learning_rate),
                      ShardImageSource(manifest.images, folder / "shards"), folder / "ckpt")
    trainer.train()
    return [w.numpy() for w in trainer.model.weights]


@pytest.fixture
def signal_handlers_restored():
    """`shardrun worker` installs SIGTERM/SIGINT handlers; put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.slow  # ~30-40 s: real backoff waits (the job file's retry policy), settles and a lease
def test_a_job_spread_over_three_drives_survives_faults_and_lost_workers(drive_emulator, tmp_path,
                                                                         signal_handlers_restored):
    emu = drive_emulator
    accounts = {name: new_drive_account(emu, quota_bytes=QUOTAS[name], name=name) for name in ACCOUNTS}
    coordinator = write_job_file(tmp_path / "coordinator", emu, accounts)
    write_images(tmp_path / "coordinator" / "images", IMAGES, size=(IMAGE_SIDE, IMAGE_SIDE))
    job = load_job(coordinator)
    dataset = sum(p.stat().st_size for p in (tmp_path / "coordinator" / "images").iterdir())
    shard_room = QUOTA_BYTES - RESERVE_MB * MB
    assert dataset > QUOTA_BYTES and dataset > 2 * shard_room  # no Drive holds it, nor any two accounts' room

    # -- plan, with a shard's upload dropped mid-chunk and a 429 on another chunk ----------------
    emu.faults.add("drop", times=1, methods="upload.chunk", keep=500_000, after=1)
    emu.faults.add("rate_limit", times=1, methods="upload.chunk", after=5)
    planned = CliRunner().invoke(main, ["plan", str(coordinator)])
    assert planned.exit_code == 0, planned.output
    assert emu.faults.fired("drop") == 1 and emu.faults.fired("rate_limit") == 1
    ledger = fold_journal(job, tmp_path / "after-plan.db")
    shards = ledger.shards()
    assert len(shards) == 8
    per_account = {name: sum(s["size"] for s in shards if s["account"] == name) for name in ACCOUNTS}
    assert all(per_account[name] > 0 for name in ACCOUNTS), per_account  # spread over all three
    assert all(size <= shard_room for size in per_account.values())
    assert [(c["start_step"], c["end_step"]) for c in ledger.chunks("x2")] == [(0, 4), (4, 8), (8, 12)]
    emu.faults.clear()
    plan_faults = len(emu.faults.log)
    switch_faults_on(emu)
    emu.reset_calls()

    # -- alice's worker dies mid-chunk, right after a heartbeat at step 3 (its checkpoint: step 2)
    def die_at_step_3(run, chunk, step, end, loss):
        if step >= 3:
            raise Died()

    alice = worker_as_the_cli_builds_it(
        write_job_file(tmp_path / "alice", emu, accounts), "alice",
        WorkerSettings(settle_seconds=0.6, heartbeat_seconds=0.0, checkpoint_seconds=3600, checkpoint_steps=2,
                       poll_seconds=0.2), on_progress=die_at_step_3)
    with pytest.raises(Died):
        alice.run()
    # alice's checkpoint at step 2, her only upload over 1 MiB, went up through the dropped chunk
    assert ("drop", "upload.chunk", accounts["alice"].email) in emu.faults.log[plan_faults:]

    # -- bob's worker waits out alice's lease (1.8 s), resumes from step 2, and is stopped at step 3 -----
    bob = worker_as_the_cli_builds_it(
        write_job_file(tmp_path / "bob", emu, accounts), "bob",
        WorkerSettings(settle_seconds=0.6, heartbeat_seconds=0.0, checkpoint_seconds=3600, poll_seconds=0.2))
    bob.on_progress = lambda run, chunk, step, end, loss: bob.request_stop() if step >= 3 else None
    assert bob.run() == "stopped"
    (outcome,) = bob.outcomes
    assert (outcome.chunk, outcome.generation, outcome.start_step, outcome.step, outcome.result) == (0, 1, 2, 3, "yield")

    # -- carol runs `shardrun worker` on the command line and finishes the job -------------------
    carol_file = write_job_file(tmp_path / "carol", emu, accounts)
    carol = CliRunner().invoke(main, ["worker", str(carol_file), "--account", "carol", "--settle-seconds", "0.6",
                                      "--poll-seconds", "0.2", "--heartbeat-minutes", "0.01"])
    assert carol.exit_code == 0, carol.output
    assert "x2 chunk 0: done at step 4 (from 3," in carol.output and "worker stopped: finished" in carol.output

    # -- every fault fired, and the workers went on regardless ----------------------------------
    fired = Counter(kind for kind, _, _ in emu.faults.log[plan_faults:])
    assert dict(fired) == {"rate_limit": 2, "user_rate_limit": 1, "rate_limit_403": 1, "backend_error": 1,
                     "unavailable": 1, "bad_gateway": 1, "drop": 2, "expire_session": 1, "partial_range": 4}
    calls = emu.calls
    assert sum(n for (_, method), n in calls.items() if method == "upload.chunk") >= 2 * 5  # 5 checkpoints

    # -- the job is complete and nothing is lost -------------------------------------------------
    # Readers agree on the same events: the lag would still hide carol's last writes (her leave,
    # written just now) from one fold but not from a later one, so let every write be listed first.
    emu.faults.listing_lag = 0.0
    everything = fold_journal(job, tmp_path / "all-events.db")
    assert everything.bad_events() == []
    chunks = everything.chunks("x2")
    assert [c["state"] for c in chunks] == ["done"] * 3
    assert everything.run("x2")["steps_done"] == everything.run("x2")["steps_total"] == 12
    assert [c["generation"] for c in chunks] == [2, 0, 0]  # alice's lease expired, bob yielded
    carols = Ledger.open(tmp_path / "carol" / ".shardrun" / "e2e" / "ledger.db")
    carols.sync(Journal(job.open_store(job.home), job.name))
    assert carols.dump() == everything.dump()  # a worker's ledger and a newcomer's fold agree
    for shard in everything.shards():  # every shard whole, where the plan put it
        store = job.open_store(job.account(shard["account"]))
        assert store.stat(shard["key"]).md5 == shard["md5"]
        store.download(shard["key"], tmp_path / "check" / f"{shard['id']}.tar", expected_md5=shard["md5"])
    home = job.open_store(job.home)
    from shardrun.ledger.retention import RetentionRule, kept_checkpoints, run_view

    # Every chunk's checkpoint, and the accepted ones retention keeps (the others may be deleted).
    kept = kept_checkpoints(run_view(everything, "x2"), everything.latest_time(), RetentionRule())
    checkpoints = {(c["checkpoint_key"], c["checkpoint_md5"]) for c in chunks}
    checkpoints |= {(k["key"], k["md5"]) for k in everything.checkpoints("x2") if k["key"] in kept}
    assert len(checkpoints) >= 3
    for key, md5 in checkpoints:
        home.get_bytes(key, expected_md5=md5)  # raises if missing or damaged
    from shardrun.train.trainer import read_checkpoint

    final = tmp_path / "final.ckpt.npz"
    home.download(chunks[-1]["checkpoint_key"], final, expected_md5=chunks[-1]["checkpoint_md5"])
    meta, weights, _ = read_checkpoint(final)
    assert meta["step"] == 12
    straight = straight_weights(job, everything, tmp_path / "straight")
    assert len(weights) == len(straight) and all(np.array_equal(a, b) for a, b in zip(weights, straight))

    # -- status: each account's usage is the emulator's own accounting ---------------------------
    expected = {name: emu.usage(accounts[name].email) for name in ACCOUNTS}
    assert expected["alice"] > per_account["alice"]  # the home also holds checkpoints and the journal
    status = job_status(job)
    assert {a["name"]: a["used_bytes"] for a in status["accounts"]} == expected
    assert {a["name"]: a["quota_bytes"] for a in status["accounts"]} == QUOTAS
    shown = CliRunner().invoke(main, ["status", str(coordinator), "--json"])
    assert shown.exit_code == 0, shown.output
    as_json = json.loads(shown.output)
    assert {a["name"]: a["used_bytes"] for a in as_json["accounts"]} == expected
    assert {a["name"]: a["shards"] for a in as_json["accounts"]} == {
        name: sum(1 for s in shards if s["account"] == name) for name in ACCOUNTS}
    assert as_json["runs"][0]["steps_done"] == 12

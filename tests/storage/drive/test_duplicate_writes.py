"""Chaos on the Drive emulator with Drive-style duplicate writes: creates that Drive carries out
but whose answers are lost, while three workers contend for one run and lists lag. The job
finishes, no event exists twice, and a reader that followed the run live agrees, row by row,
with one that folds the journal afresh."""

from __future__ import annotations

import threading

import pytest

from shardrun.config.job import load_job
from shardrun.journal import Journal
from shardrun.ledger.db import Ledger
from shardrun.plan.job import plan_job
from shardrun.worker import WorkerSettings
from tests.conftest import job_text, write_images
from tests.drive_accounts import new_drive_account
from tests.storage.drive.test_end_to_end import fold_journal, worker_as_the_cli_builds_it
from tests.test_worker_faults import run_together

ACCOUNTS = ("alice", "bob", "carol")
RUN = dict(name="x2", model="espcn", scale=2, channels=1, epochs=3, batch_size=16, patch_size=16,
           patches_per_image=4, patches_per_second=0.002, seed=5)


def job_file(folder, emu, accounts):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.toml"
    path.write_text(job_text(
        "dups", platform="colab-free", shard_size_mb=1, reserve_mb=0, lease_minutes=0.05,
        drive_root_url=emu.root_url, drive_chunk_mib=1,
        accounts=[dict(name=n, store=f"drive://{accounts[n].folder}", token=accounts[n].token, quota_gb=1)
                  for n in ACCOUNTS], runs=[RUN]))
    return path


@pytest.mark.slow  # three workers train 12 steps on the emulator, with settles and lagging listings
def test_lost_create_answers_with_three_contending_workers_leave_every_reader_agreeing(drive_emulator, tmp_path):
    emu = drive_emulator
    accounts = {n: new_drive_account(emu, quota_bytes=2**30, name=n) for n in ACCOUNTS}
    coordinator = job_file(tmp_path / "coordinator", emu, accounts)
    write_images(tmp_path / "coordinator" / "images", 16, size=(64, 64))
    job = load_job(coordinator)
    assert plan_job(job, scan_workers=1).written
    # Creates carried out whose answers never come back: each retry would once have made a copy.
    emu.faults.add("drop", times=8, methods="files.create:multipart", processed=True, after=2)
    emu.faults.listing_lag = 0.3

    live = Ledger.open(tmp_path / "live.db")
    live_journal = Journal(job.open_store(job.home), job.name)
    running, stop = threading.Event(), threading.Event()
    running.set()

    def follow():
        while running.is_set():
            live.sync(live_journal)
            stop.wait(0.3)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    settings = WorkerSettings(settle_seconds=0.6, heartbeat_seconds=0.0, checkpoint_seconds=3600,
                              checkpoint_steps=2, poll_seconds=0.2)
    workers = [worker_as_the_cli_builds_it(job_file(tmp_path / n, emu, accounts), n, settings) for n in ACCOUNTS]
    try:
        assert run_together(workers) == ["finished"] * 3
    finally:
        running.clear()
        stop.set()
        follower.join(60)
    assert emu.faults.fired("drop") == 8
    emu.faults.listing_lag = 0.0
    live.sync(live_journal)

    fresh = fold_journal(job, tmp_path / "fresh.db")
    assert [c["state"] for c in fresh.chunks("x2")] == ["done"] * 3
    assert fresh.bad_events() == [] and live.bad_events() == []
    assert live.dump() == fresh.dump()  # every derived table, row by row
    assert live.runs() == fresh.runs()
    journal_names = _file_names(emu, _journal_folder(emu, accounts["alice"].folder))  # every bucket's
    assert len(journal_names) == len(set(journal_names))  # no event stored twice, though 8 answers were lost
    folded = {row[0] for row in fresh.db.execute("SELECT id FROM events")}
    assert {f"{i}.json" for i in folded} <= set(journal_names)


def _journal_folder(emu, root: str) -> str:
    (job,) = [i for i in emu.file_ids(root) if emu.metadata(i)["name"] == "dups"]
    (journal,) = [i for i in emu.file_ids(job) if emu.metadata(i)["name"] == "journal"]
    return journal


def _file_names(emu, folder: str) -> list[str]:
    """Returns the names of the untrashed files in `folder` and every folder below it."""
    names = []
    for i in emu.file_ids(folder):
        meta = emu.metadata(i)
        if meta["trashed"]:
            continue
        if meta["mimeType"] == "application/vnd.google-apps.folder":
            names += _file_names(emu, i)
        else:
            names.append(meta["name"])
    return names

"""`plan` onto Drive accounts on the emulator: a full Drive sends the shard to another account."""

from __future__ import annotations

from shardrun.config.job import load_job
from shardrun.plan.job import plan_job
from tests.conftest import SMALL_RUN, job_text, write_images
from tests.drive_accounts import new_drive_account


def test_plan_moves_shards_off_a_drive_that_turns_out_full(drive_emulator, tmp_path):
    emu = drive_emulator
    alice = new_drive_account(emu, quota_bytes=1_200_000, name="alice")  # Drive holds less than the job says
    bob = new_drive_account(emu, quota_bytes=100_000_000, name="bob")
    write_images(tmp_path / "images", 6, size=(400, 400))  # random pixels: ~480 kB each, three 1 MB shards
    job_file = tmp_path / "job.toml"
    job_file.write_text(job_text(
        "full", reserve_mb=0, shard_size_mb=1, drive_root_url=emu.root_url, drive_chunk_mib=1, platform=None,
        accounts=[dict(name=name, store=f"drive://{account.folder}", token=account.token, quota_gb=1)
                  for name, account in (("alice", alice), ("bob", bob))],
        runs=[dict(SMALL_RUN, patches_per_second=100.0)]))
    job = load_job(job_file)
    phases = []
    report = plan_job(job, scan_workers=1, on_progress=lambda phase, done, total: phases.append((phase, done, total)))
    assert report.written
    assert any(note.startswith("account alice is full") for note in report.notes)
    placed = {s["id"]: s["account"] for s in report.shards}
    assert "bob" in placed.values() and len(placed) == 3
    stores = {a.name: job.open_store(a) for a in job.accounts}
    for shard in report.shards:  # every shard whole, where the plan says
        assert stores[shard["account"]].stat(shard["key"]).md5 == shard["md5"]
    assert emu.usage(alice.email) <= 1_200_000
    byte_steps = [(done, total) for phase, done, total in phases if phase == "shard-bytes"]
    assert byte_steps and byte_steps[-1][0] == byte_steps[-1][1] > 400_000

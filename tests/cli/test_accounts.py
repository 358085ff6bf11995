"""`shardrun accounts list|check|login` against Drive accounts on the emulator and a local folder."""

from __future__ import annotations

from click.testing import CliRunner

from shardrun.cli.main import main
from tests.conftest import SMALL_RUN, job_text
from tests.drive_accounts import new_drive_account

MB = 1_000_000


def drive_job(tmp_path, emu, accounts) -> str:
    """Writes a job whose accounts are (name, folder, token) on the emulator plus a local one."""
    drive = [dict(name=name, store=f"drive://{folder}", token=token, quota_gb=1) for name, folder, token in accounts]
    path = tmp_path / "job.toml"
    path.write_text(job_text("acct-job", accounts=[*drive, ("lab", 2)], runs=[SMALL_RUN], platform=None,
                             drive_root_url=emu.root_url, drive_retries=2, drive_retry_seconds=5))
    return str(path)


def test_list_shows_identity_sign_in_and_quota(drive_emulator, tmp_path):
    emu = drive_emulator
    alice = new_drive_account(emu, quota_bytes=50 * MB, name="alice")
    bob = new_drive_account(emu, quota_bytes=None, name="bob")
    emu.create_file(alice.email, "photo.jpg", b"p" * 1234, parent_id=alice.folder)
    job = drive_job(tmp_path, emu, [("alice", alice.folder, alice.token), ("bob", bob.folder, bob.token)])
    result = CliRunner().invoke(main, ["accounts", "list", job])
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert "alice@example.com" in rows["alice"] and "1.23 kB" in rows["alice"] and "50.00 MB" in rows["alice"]
    assert "token (job file)" in rows["alice"]
    assert "bob@example.com" in rows["bob"] and "1.00 GB" in rows["bob"]  # Drive: unlimited; the job caps it
    assert "local folder" in rows["lab"] and "2.00 GB" in rows["lab"]
    assert alice.token not in result.output


def test_check_writes_reads_and_deletes_a_probe_everywhere(drive_emulator, tmp_path):
    emu = drive_emulator
    alice = new_drive_account(emu, name="alice")
    job = drive_job(tmp_path, emu, [("alice", alice.folder, alice.token)])
    result = CliRunner().invoke(main, ["accounts", "check", job])
    assert result.exit_code == 0, result.output
    assert "FAILED" not in result.output
    calls = emu.calls
    assert calls[(alice.email, "files.create:multipart")] == 1 and calls[(alice.email, "files.delete")] == 1
    assert emu.usage(alice.email) == 0  # the probe is gone
    assert not list((tmp_path / "stores" / "lab").rglob("*.txt"))


def test_check_names_each_failing_account_on_one_line(drive_emulator, tmp_path):
    emu = drive_emulator
    alice = new_drive_account(emu, name="alice")
    bob = new_drive_account(emu, name="bob")
    carol = new_drive_account(emu, name="carol", quota_bytes=10)
    unshared = emu.create_folder(alice.email, "private")  # bob's token cannot see alice's folder
    emu.revoke(carol.token)
    job = drive_job(tmp_path, emu, [("alice", alice.folder, alice.token), ("bob", unshared, bob.token),
                                    ("carol", carol.folder, carol.token), ("alice2", alice.folder + "x", alice.token)])
    result = CliRunner().invoke(main, ["accounts", "check", job])
    assert result.exit_code == 1
    by_account = {line.split(":")[0]: line for line in result.stderr.splitlines()}
    assert set(by_account) == {"bob", "carol", "alice2"}
    assert unshared in by_account["bob"] and "bob@example.com" in by_account["bob"]
    assert "sign in again" in by_account["carol"]
    assert alice.folder + "x" in by_account["alice2"]


def test_two_accounts_signed_in_as_one_person_fail_the_check(drive_emulator, tmp_path):
    emu = drive_emulator
    alice = new_drive_account(emu, name="alice")
    second = emu.create_folder(alice.email, "second")
    job = drive_job(tmp_path, emu, [("alice", alice.folder, alice.token), ("bob", second, alice.token)])
    result = CliRunner().invoke(main, ["accounts", "check", job])
    assert result.exit_code == 1
    assert "bob: signs in as alice@example.com, like account alice" in " ".join(result.output.split())


def test_login_needs_the_users_own_client_id(drive_emulator, tmp_path):
    emu = drive_emulator
    alice = new_drive_account(emu, name="alice")
    job = tmp_path / "job.toml"
    job.write_text(job_text("j", accounts=[dict(name="alice", store=f"drive://{alice.folder}", auth="oauth")],
                            runs=[SMALL_RUN], platform=None))
    result = CliRunner().invoke(main, ["accounts", "login", str(job), "--no-browser"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: Drive account 'alice': signing in needs your OAuth client id")
    result = CliRunner().invoke(main, ["accounts", "login", str(job), "--account", "nobody"])
    assert result.exit_code == 1 and "no account named 'nobody'" in result.output

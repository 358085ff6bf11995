"""Credentials never leave the sign-in code: a planted token and refresh token are searched for
in the ledger, every object on Drive, logs, command output, error messages and reprs, after a
plan, a status and a run of failures (revoked sign-in, a rate-limit storm, a missing folder)."""

from __future__ import annotations

import json
import logging
import secrets

import pytest
from click.testing import CliRunner

from shardrun.cli.main import main
from shardrun.config.job import load_job
from shardrun.errors import ShardrunError
from tests.conftest import SMALL_RUN, job_text, write_images


def messages_of(error: BaseException) -> list[str]:
    """Returns the messages of an error and of every error it was raised from or during."""
    found, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        found += [str(error), repr(error)]
        error = error.__cause__ or error.__context__
    return found


def test_planted_credentials_appear_nowhere(drive_emulator, tmp_path, caplog):
    emu = drive_emulator
    caplog.set_level(logging.DEBUG)
    planted = {name: f"ya29.PLANTED-{name}-{secrets.token_hex(8)}" for name in ("alice", "bob")}
    refresh = f"1//PLANTED-refresh-{secrets.token_hex(8)}"
    for name, token in planted.items():
        emu.add_account(f"{name}@example.com", token=token, quota_bytes=200_000_000,
                        refresh_token=refresh if name == "bob" else None)
    home = emu.create_folder("alice@example.com", "shardrun")
    bob_folder = emu.create_folder("bob@example.com", "shardrun")
    emu.share(home, "bob@example.com")
    token_file = tmp_path / "bob-token.json"
    token_file.write_text(json.dumps({"token": planted["bob"], "refresh_token": refresh, "client_id": "cid",
                                      "client_secret": "PLANTED-client-secret", "token_uri": emu.token_uri}))
    write_images(tmp_path / "images", 6)
    job_file = tmp_path / "job.toml"
    job_file.write_text(job_text(
        "leak-test", reserve_mb=0, shard_size_mb=1, drive_root_url=emu.root_url, drive_retries=1,
        drive_retry_seconds=5, platform=None,
        accounts=[dict(name="alice", store=f"drive://{home}", token=planted["alice"]),
                  dict(name="bob", store=f"drive://{bob_folder}", auth="oauth", credentials=str(token_file))],
        runs=[dict(SMALL_RUN, patches_per_second=100.0)]))
    secrets_planted = [*planted.values(), refresh, "PLANTED-client-secret"]
    outputs: list[str] = []
    runner = CliRunner()

    def run(*args, expect_ok=True):
        result = runner.invoke(main, list(args))
        outputs.extend([result.output, result.stderr])
        if result.exception and not isinstance(result.exception, SystemExit):
            outputs.extend(messages_of(result.exception))
        assert (result.exit_code == 0) == expect_ok, result.output
        return result

    run("plan", str(job_file))
    emu.expire_token(planted["bob"])  # bob's next call refreshes through the token endpoint
    run("status", str(job_file), "--json")
    run("accounts", "list", str(job_file))
    run("accounts", "check", str(job_file))
    assert emu.calls[(None, "oauth.token")] >= 1

    # Failures: a revoked sign-in, a storm past the retry cap, a folder that is not there.
    job = load_job(job_file)
    errors: list[BaseException] = []
    emu.revoke(refresh)
    bob_store = job.open_store(job.account("bob"))
    emu.faults.add("rate_limit", times=float("inf"), methods="files.*", account="alice@example.com")
    alice_store = job.open_store(job.account("alice"))
    for operation in (lambda: bob_store.put_bytes("x", b"1"), lambda: alice_store.list_keys("leak-test/"),
                      lambda: job.open_store(job.account("alice")).put_bytes("leak-test/y", b"2")):
        with pytest.raises(ShardrunError) as caught:
            operation()
        errors.append(caught.value)
    run("accounts", "check", str(job_file), expect_ok=False)
    emu.faults.clear()
    outputs += [m for e in errors for m in messages_of(e)]
    outputs += [repr(job), repr(job.accounts), repr(bob_store), repr(alice_store), str(job)]

    # Everything the job left behind: the local ledger and every object in every Drive folder.
    stored = [job.ledger_path.read_bytes()]
    stored += [emu.read(i) for i in _all_file_ids(emu, [home, bob_folder])]
    assert len(stored) >= 5  # the ledger, the journal, the manifest, the snapshot and the shards were searched
    logs = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert len(caplog.records) > 0
    for secret in secrets_planted:
        for text in outputs + [logs]:
            assert secret not in (text or ""), f"a planted credential leaked into: {text[:200]!r}"
        for blob in stored:
            assert secret.encode() not in blob


def _all_file_ids(emu, folders: list[str]) -> list[str]:
    ids, todo = [], list(folders)
    while todo:
        for child in emu.file_ids(todo.pop()):
            if emu.metadata(child)["mimeType"] == "application/vnd.google-apps.folder":
                todo.append(child)
            else:
                ids.append(child)
    return ids

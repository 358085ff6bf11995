"""DriveStore against the Drive emulator: what only Drive does (the shared contract runs in
test_store_contract.py). The real google-api-python-client speaks HTTP to the emulator."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat as stat_module
import time

import pytest

from shardrun.errors import IntegrityError, NotFound, PermissionDenied, QuotaExceeded, TransientError
from shardrun.storage.account import Account
from shardrun.storage.drive.settings import DriveSettings
from shardrun.storage.registry import open_store
from shardrun.storage.drive.store import DriveStore
from tests.drive_accounts import SMALL_CHUNK, drive_store_for, new_drive_account

CHUNK = SMALL_CHUNK  # 256 KiB: large objects take several chunks without being large


@pytest.fixture
def emu(drive_emulator):
    return drive_emulator


@pytest.fixture
def alice(emu):
    return new_drive_account(emu, quota_bytes=50 * CHUNK, name="alice")


@pytest.fixture
def store(emu, alice):
    return drive_store_for(emu, alice, chunk_bytes=CHUNK)


def names_in(emu, folder_id: str) -> list[str]:
    return sorted(emu.metadata(i)["name"] for i in emu.file_ids(folder_id) if not emu.metadata(i)["trashed"])


def calls(emu, method: str) -> int:
    return sum(n for (_, m), n in emu.calls.items() if m == method)


def payload(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


# -- duplicate names, racing folders, lagging listings ------------------------------------------


def test_duplicate_file_names_oldest_wins_and_the_next_write_tidies_them(emu, alice, store):
    emu.create_file(alice.email, "dup.bin", b"older", parent_id=alice.folder)
    time.sleep(0.005)
    emu.create_file(alice.email, "dup.bin", b"newer", parent_id=alice.folder)
    assert store.get_bytes("dup.bin") == b"older"  # the first copy: what a reader listing early saw
    assert store.stat("dup.bin").md5 == hashlib.md5(b"older").hexdigest()
    assert store.list_keys() == ["dup.bin"]  # one key, however many files carry its name
    store.put_bytes("dup.bin", b"newest")
    assert names_in(emu, alice.folder) == ["dup.bin"]
    assert store.get_bytes("dup.bin") == b"newest"


def test_a_create_whose_answer_is_lost_is_retried_without_a_duplicate(emu, alice, store):
    emu.faults.add("drop", times=1, methods="files.create:multipart", processed=True)
    stat = store.put_bytes("job/journal/e1.json", b"{}")
    assert emu.faults.fired("drop") == 1
    (folder,) = [i for i in emu.file_ids(alice.folder) if emu.metadata(i)["name"] == "job"]
    (journal,) = emu.file_ids(folder)
    assert names_in(emu, journal) == ["e1.json"]  # the retry found its own file: no second copy
    assert stat.md5 == hashlib.md5(b"{}").hexdigest() and store.get_bytes("job/journal/e1.json") == b"{}"
    assert calls(emu, "files.generateIds") == 1  # ids are reserved in batches, not one call per create
    for i in range(5):
        store.put_bytes(f"job/journal/more-{i}.json", b"{}")
    assert calls(emu, "files.generateIds") == 1


def test_a_folder_created_twice_does_not_split_the_tree(emu, alice, store):
    older = emu.create_folder(alice.email, "job", parent_id=alice.folder)
    time.sleep(0.005)
    newer = emu.create_folder(alice.email, "job", parent_id=alice.folder)
    emu.create_file(alice.email, "from-the-race.json", b"1", parent_id=newer)
    stat = store.put_bytes("job/mine.json", b"2")
    assert store.list_keys("job/") == ["job/from-the-race.json", "job/mine.json"]
    assert store.get_bytes("job/from-the-race.json") == b"1"
    mine = [i for i in emu.file_ids(older) if emu.metadata(i)["name"] == "mine.json"]
    assert len(mine) == 1 and emu.metadata(mine[0])["md5Checksum"] == stat.md5  # new files go to the oldest


def test_lagging_listings_a_written_key_is_found_by_id_and_racing_writers_still_meet(emu, alice):
    store = drive_store_for(emu, alice, chunk_bytes=CHUNK, folder_refresh_s=0)  # looks for duplicate folders each time
    lag = 2.0  # long enough that the listing still lags when the assertions below run, even on a busy machine
    emu.faults.listing_lag = lag
    store.put_bytes("j/e1.json", b"one")
    # Listings do not show it yet, but this store knows the file's id.
    assert store.list_keys("j/") == []
    assert store.get_with_stat("j/e1.json")[0] == b"one"
    assert store.stat("j/e1.json").size == 3
    # Another writer cannot see folder j yet and creates its own: two folders named j.
    other = drive_store_for(emu, alice, chunk_bytes=CHUNK)
    with pytest.raises(NotFound):
        other.stat("j/e1.json")
    other.put_bytes("j/e2.json", b"two")
    time.sleep(lag + 0.05)  # every write above is listed by now
    assert store.list_keys("j/") == ["j/e1.json", "j/e2.json"]  # it finds the other writer's folder j
    fresh = drive_store_for(emu, alice, chunk_bytes=CHUNK)
    assert fresh.list_keys("j/") == ["j/e1.json", "j/e2.json"]
    assert [s.key for s in fresh.list("j/")] == ["j/e1.json", "j/e2.json"]
    assert fresh.get_bytes("j/e2.json") == b"two"


# -- large objects: resumable, verified, ranged -----------------------------------------------


def test_an_interrupted_upload_resumes_from_what_drive_kept(emu, store):
    data = payload(6 * CHUNK)
    # The third chunk's connection drops after 300 KB arrived: Drive keeps the whole 256 KiB unit.
    emu.faults.add("drop", methods="upload.chunk", after=2, keep=300_000)
    stat = store.put_bytes("big/shard.tar", data)
    assert stat.md5 == hashlib.md5(data).hexdigest()
    assert store.get_bytes("big/shard.tar") == data
    assert calls(emu, "files.create:resumable") == 1  # the same session, not a new one
    # 3 chunks (the third dropped), one status query, then only the 3 chunks Drive lacked (from
    # byte 768 KiB): starting over would have sent all 6 again.
    assert calls(emu, "upload.chunk") == 3 + 1 + 3


def test_an_expired_upload_session_is_replaced_by_a_new_one(emu, alice, store):
    data = payload(4 * CHUNK, seed=3)
    emu.faults.add("expire_session", methods="upload.chunk", after=2)
    stat = store.put_bytes("big/expired.tar", data)
    assert calls(emu, "files.create:resumable") == 2
    assert store.get_bytes("big/expired.tar") == data and stat.size == len(data)
    assert store.list_keys("big/") == ["big/expired.tar"]


def test_downloads_stream_in_ranged_chunks_and_resume_from_a_part_file(emu, store, tmp_path):
    data = payload(5 * CHUNK + 123, seed=5)
    stat = store.put_bytes("big/f", data)
    emu.reset_calls()
    progress = []
    store.download("big/f", tmp_path / "f", expected_md5=stat.md5, progress=lambda done, total: progress.append(done))
    assert (tmp_path / "f").read_bytes() == data
    assert calls(emu, "files.get:media") == 6  # never the whole object in one response
    assert progress[-1] == len(data) and progress == sorted(progress)
    emu.reset_calls()
    (tmp_path / "g.part").write_bytes(data[:4 * CHUNK])
    store.download("big/f", tmp_path / "g", expected_md5=stat.md5)
    assert (tmp_path / "g").read_bytes() == data
    assert calls(emu, "files.get:media") == 2  # only the missing tail


def test_short_ranged_answers_are_continued(emu, store):
    data = payload(2 * CHUNK, seed=9)
    store.put_bytes("p", data)
    emu.faults.add("partial_range", times=3, methods="files.get:media", serve=1000)
    assert store.get_bytes("p") == data


def test_upload_progress_reaches_the_whole_file(store, tmp_path):
    source = tmp_path / "src"
    source.write_bytes(payload(3 * CHUNK + 5))
    seen = []
    store.put_file("up/src", source, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (source.stat().st_size, source.stat().st_size)
    assert len(seen) >= 3


def test_a_file_changed_behind_our_back_fails_verification(emu, alice, store, tmp_path):
    stat = store.put_bytes("c/ckpt", b"weights v1")
    file_id = emu.file_ids(emu.file_ids(alice.folder)[0])[0]
    emu.tamper(file_id, b"weights??")
    with pytest.raises(IntegrityError, match="c/ckpt"):
        store.download("c/ckpt", tmp_path / "ckpt", expected_md5=stat.md5)
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(IntegrityError, match="expected " + stat.md5):
        store.get_bytes("c/ckpt", expected_md5=stat.md5)


# -- retries and the error vocabulary ---------------------------------------------------------


def test_bursts_of_429_503_and_rate_limit_403_are_retried(emu, store):
    emu.faults.add("rate_limit", times=2, methods="files.list")
    emu.faults.add("unavailable", times=2, methods="files.create:multipart")
    emu.faults.add("user_rate_limit", times=1, methods="files.get:media")
    emu.faults.add("backend_error", times=1, methods="upload.chunk", after=1)
    store.put_bytes("r/small", b"x")
    big = payload(3 * CHUNK)
    store.put_bytes("r/big", big)
    assert store.get_bytes("r/small") == b"x" and store.get_bytes("r/big") == big
    assert emu.faults.fired() == 6


def test_a_429_with_retry_after_waits_as_long_as_drive_asks(emu, store, caplog):
    emu.faults.add("rate_limit", times=1, methods="files.create:multipart", retry_after=0.5)
    with caplog.at_level("INFO", logger="shardrun"):
        store.put_bytes("w/x", b"x")
    (waited,) = [float(m.group(1)) for r in caplog.records if (m := re.search(r"retry 1 in ([\d.]+) s", r.getMessage()))]
    assert waited >= 0.5  # the store's own backoff here is milliseconds (FAST_RETRY)
    assert store.get_bytes("w/x") == b"x" and emu.faults.fired() == 1


def test_a_rate_limit_storm_longer_than_the_retry_cap_is_one_clear_transient_error(emu, alice, store):
    store.put_bytes("s/before", b"kept")
    emu.faults.add("rate_limit", times=float("inf"), methods="files.*")
    with pytest.raises(TransientError) as caught:
        store.put_bytes("s/after", b"lost?")
    message = str(caught.value)
    assert "\n" not in message and "account alice" in message and "5 attempts" in message
    emu.faults.clear()
    assert store.list_keys("s/") == ["s/before"]


def test_a_full_drive_mid_upload_is_quota_exceeded_and_leaves_nothing(emu, alice, store):
    store.put_bytes("q/keep", b"k" * 1000)
    used = emu.usage(alice.email)
    emu.faults.add("quota_exceeded", methods="upload.chunk", after=1)
    with pytest.raises(QuotaExceeded, match="no room for q/shard") as caught:
        store.put_bytes("q/shard", payload(4 * CHUNK))
    assert "account alice" in str(caught.value)
    assert calls(emu, "upload.chunk") == 2  # refused, not retried
    assert store.list_keys("q/") == ["q/keep"] and emu.usage(alice.email) == used


def test_an_account_already_full_is_refused_at_the_start(emu, alice, store):
    emu.set_quota(alice.email, 2 * CHUNK)
    with pytest.raises(QuotaExceeded, match="no room for big"):
        store.put_bytes("big", payload(3 * CHUNK))
    with pytest.raises(QuotaExceeded, match="daily"):
        emu.faults.add("daily_limit", methods="files.create:multipart")
        store.put_bytes("small", b"1")
    assert store.list_keys() == []


def test_the_job_files_quota_caps_the_account_below_drives_limit(emu, alice):
    capped = drive_store_for(emu, alice, quota_bytes=1500)
    capped.put_bytes("a", b"a" * 1000)
    with pytest.raises(QuotaExceeded, match="no room for b"):
        capped.put_bytes("b", b"b" * 600)
    assert capped.usage().limit_bytes == 1500 and capped.usage().used_bytes == 1000
    assert not capped.exists("b")


def test_a_missing_or_unshared_folder_names_the_folder_and_the_account(emu, alice):
    bob = new_drive_account(emu, name="bob")
    for folder in ("no-such-folder", bob.folder):  # bob never shared his folder with alice
        stranger = DriveStore(folder, drive_store_for(emu, alice).client.credentials, root_url=emu.root_url,
                              account_name="alice")
        with pytest.raises(PermissionDenied) as caught:
            stranger.list_keys()
        assert folder in str(caught.value) and alice.email in str(caught.value)
        with pytest.raises(PermissionDenied):
            stranger.put_bytes("x", b"1")  # never a fresh, empty store in its place
    emu.share(bob.folder, alice.email)
    shared = drive_store_for(emu, alice)
    assert DriveStore(bob.folder, shared.client.credentials, root_url=emu.root_url).put_bytes("x", b"1").size == 1


def test_identity_and_usage_come_from_about(emu, alice, store):
    store.put_bytes("u", b"12345")
    assert store.identity() == alice.email
    assert store.usage().used_bytes == emu.usage(alice.email) == 5
    assert store.usage().limit_bytes == 50 * CHUNK
    unlimited = new_drive_account(emu, quota_bytes=None)
    assert drive_store_for(emu, unlimited).usage().limit_bytes is None


# -- sign-in ----------------------------------------------------------------------------------


def write_token_file(path, emu, account, token=None):
    path.write_text(json.dumps({"token": token or account.token, "refresh_token": account.refresh_token,
                                "token_uri": emu.token_uri, "client_id": "shardrun-test",
                                "client_secret": "not-a-secret", "scopes": ["https://www.googleapis.com/auth/drive"],
                                "expiry": "2999-01-01T00:00:00Z"}))
    return path


def test_an_expired_token_is_refreshed_through_token_uri_and_the_file_rewritten(emu, alice, tmp_path):
    token_file = write_token_file(tmp_path / "alice.json", emu, alice)
    store = open_store(Account("alice", f"drive://{alice.folder}", job="j",
                               settings=DriveSettings(auth="oauth", credentials=token_file, root_url=emu.root_url)))
    store.put_bytes("t/1", b"1")
    emu.expire_token(alice.token)
    store.put_bytes("t/2", b"2")
    assert calls(emu, "oauth.token") == 1
    saved = json.loads(token_file.read_text())
    assert saved["token"] != alice.token and saved["refresh_token"] == alice.refresh_token
    assert stat_module.S_IMODE(os.stat(token_file).st_mode) == 0o600


def test_a_pydrive2_credentials_file_is_read_and_left_as_it_was(emu, alice, tmp_path):
    pydrive2_file = tmp_path / "credentials.json"
    pydrive2_file.write_text(json.dumps({
        "access_token": "expired-long-ago", "client_id": "c", "client_secret": "s",
        "refresh_token": alice.refresh_token, "token_expiry": "2000-01-01T00:00:00Z", "token_uri": emu.token_uri,
        "user_agent": None, "_module": "oauth2client.client", "_class": "OAuth2Credentials"}))
    before = pydrive2_file.read_text()
    store = open_store(Account("alice", f"drive://{alice.folder}",
                               settings=DriveSettings(credentials=pydrive2_file, root_url=emu.root_url)))
    assert store.put_bytes("p", b"1").size == 1
    assert calls(emu, "oauth.token") == 1 and pydrive2_file.read_text() == before


def test_a_revoked_sign_in_is_permission_denied_saying_what_to_do(emu, alice, tmp_path):
    token_file = write_token_file(tmp_path / "alice.json", emu, alice)
    store = open_store(Account("alice", f"drive://{alice.folder}",
                               settings=DriveSettings(credentials=token_file, root_url=emu.root_url)))
    store.put_bytes("before", b"1")
    emu.revoke(alice.token)
    emu.revoke(alice.refresh_token)
    with pytest.raises(PermissionDenied) as caught:
        store.put_bytes("after", b"2")
    message = str(caught.value)
    assert "account alice" in message and "sign in again" in message and "\n" not in message


def test_no_credentials_here_is_a_clear_error_and_a_worker_falls_back_to_its_own(emu, alice, monkeypatch, tmp_path):
    monkeypatch.setenv("SHARDRUN_TOKEN_DIR", str(tmp_path / "tokens"))
    monkeypatch.setenv("SHARDRUN_DRIVE_ROOT_URL", emu.root_url)
    carol = new_drive_account(emu, name="carol")
    emu.share(carol.folder, alice.email)
    url = f"drive://{carol.folder}"
    with pytest.raises(PermissionDenied, match="Drive account 'carol' has not signed in.*accounts login"):
        open_store(Account("carol", url, job="j")).list_keys()
    monkeypatch.setenv("SHARDRUN_DRIVE_TOKEN_ALICE", alice.token)
    store = open_store(Account("carol", url, job="j", fallback=Account("alice", "drive://alices-folder", job="j")))
    assert store.identity() == alice.email and store.list_keys() == []


def test_the_endpoint_override_and_per_account_token_from_the_environment_move_every_call(emu, alice, monkeypatch):
    monkeypatch.setenv("SHARDRUN_DRIVE_ROOT_URL", emu.root_url)
    monkeypatch.setenv("SHARDRUN_DRIVE_TOKEN_ALICE", alice.token)
    store = open_store(Account("alice", f"drive://{alice.folder}", settings=DriveSettings(chunk_mib=1)))
    data = payload(3 * (1 << 20) // 2)
    store.put_bytes("big", data)  # resumable: the upload URLs, too, lead to the emulator
    store.put_bytes("small", b"s")
    assert calls(emu, "files.create:resumable") == 1 and calls(emu, "upload.chunk") == 2
    assert calls(emu, "files.create:multipart") == 1
    assert store.get_bytes("big") == data


def test_a_lost_answer_to_the_last_chunk_finds_the_upload_complete(emu, alice, store):
    data = payload(3 * CHUNK, seed=11)
    # The last chunk arrives whole, but the connection drops before Drive's answer.
    emu.faults.add("drop", methods="upload.chunk", after=2, keep=CHUNK)
    stat = store.put_bytes("done/shard.tar", data)
    assert stat.md5 == hashlib.md5(data).hexdigest()
    assert calls(emu, "files.create:resumable") == 1 and calls(emu, "upload.chunk") == 3 + 1
    assert store.list_keys("done/") == ["done/shard.tar"] and store.get_bytes("done/shard.tar") == data
    folder = emu.file_ids(alice.folder)[0]
    assert len(emu.file_ids(folder)) == 1  # one file, not two


def test_reading_what_a_listing_returned_costs_one_call_per_object_and_stays_right(emu, alice, store):
    written = {f"ev/{n}.json": store.put_bytes(f"ev/{n}.json", b'{"n": %d}' % n) for n in range(5)}
    emu.reset_calls()
    keys = store.list_keys("ev/")
    read = {key: store.get_with_stat(key) for key in keys}
    assert {k: (d, s.mtime) for k, (d, s) in read.items()} == {
        k: (b'{"n": %d}' % n, written[k].mtime) for n, k in enumerate(sorted(written))}
    assert dict(emu.calls) == {(alice.email, "files.list"): 1, (alice.email, "files.get:media"): 5}
    # Changed by another writer between the listing and the read: the read still gets the new version.
    store.list_keys("ev/")
    newer = drive_store_for(emu, alice).put_bytes("ev/0.json", b'{"n": "changed"}')
    data, stat = store.get_with_stat("ev/0.json")
    assert data == b'{"n": "changed"}' and stat.mtime == newer.mtime

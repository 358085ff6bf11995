"""The Drive emulator behaves like Drive v3: driven through the real google-api-python-client
(static discovery document rooted at the emulator, google-auth bearer credentials) and, where the
library hides the wire, through raw HTTP."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import threading
import time
from urllib.parse import urlsplit

import httplib2
import pytest
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseDownload, MediaIoBaseUpload

from tests.drive_emulator import FOLDER_MIME, DriveEmulator

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
CHUNK = 256 * 1024
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def emu(drive_emulator):
    """The emulator with alice (refreshable), bob and carol; alice owns a folder shared with bob."""
    drive_emulator.add_account(ALICE, token="tok-alice", refresh_token="refresh-alice")
    drive_emulator.add_account(BOB, token="tok-bob")
    drive_emulator.add_account(CAROL, token="tok-carol")
    drive_emulator.folder = drive_emulator.create_folder(ALICE, "shardrun")
    drive_emulator.share(drive_emulator.folder, BOB, role="writer")
    return drive_emulator


def raw(emu, method, path, token="tok-alice", body=b"", headers=None):
    """(status, headers, body) of one plain HTTP request to the emulator."""
    connection = http.client.HTTPConnection("127.0.0.1", urlsplit(emu.root_url).port, timeout=10)
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    connection.close()
    return result


def reason_of(error: HttpError) -> tuple[int, str, str]:
    entry = json.loads(error.content)["error"]["errors"][0]
    return error.resp.status, entry["domain"], entry["reason"]


def upload(service, name, data, parent, resumable=True, chunksize=CHUNK, fields="id,size,md5Checksum"):
    media = MediaIoBaseUpload(io.BytesIO(data), "application/octet-stream", resumable=resumable,
                              chunksize=chunksize)
    return service.files().create(body={"name": name, "parents": [parent]}, media_body=media,
                                  fields=fields).execute()


def download(service, file_id, chunksize=100_000) -> tuple[bytes, int]:
    """The file's bytes through MediaIoBaseDownload (Range requests) and how many requests it took."""
    buffer = io.BytesIO()
    downloader = MediaIoBaseDownload(buffer, service.files().get_media(fileId=file_id), chunksize=chunksize)
    done, requests = False, 0
    while not done:
        _, done = downloader.next_chunk()
        requests += 1
    return buffer.getvalue(), requests


# -- auth ---------------------------------------------------------------------------------------
def test_an_unknown_token_gets_401_auth_error_with_drives_body(emu):
    status, headers, body = raw(emu, "GET", "/drive/v3/files", token="not-a-token")
    error = json.loads(body)["error"]
    assert status == 401 and error["code"] == 401
    assert error["errors"][0]["reason"] == "authError" and error["errors"][0]["location"] == "Authorization"
    assert headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(RefreshError):          # google-auth cannot refresh a bare token
        emu.service(Credentials(token="not-a-token")).files().list().execute()


def test_an_expired_token_is_refreshed_through_the_token_endpoint(emu):
    credentials = emu.credentials(ALICE)
    drive = emu.service(credentials)
    emu.expire_token("tok-alice")
    assert raw(emu, "GET", "/drive/v3/files")[0] == 401
    listing = drive.files().list(q=f"'{emu.folder}' in parents", fields="files(id)").execute()
    assert listing == {"files": []}
    assert credentials.token not in ("tok-alice", None)
    assert emu.calls[(None, "oauth.token")] == 1
    assert raw(emu, "GET", "/drive/v3/about?fields=user", token=credentials.token)[0] == 200


def test_a_revoked_refresh_token_gets_invalid_grant_and_its_access_tokens_stop(emu):
    fresh = emu.refresh("refresh-alice")
    emu.revoke("refresh-alice")
    status, _, body = raw(emu, "POST", "/token", token=None,
                          body=b"grant_type=refresh_token&refresh_token=refresh-alice&client_id=c&client_secret=s",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and json.loads(body)["error"] == "invalid_grant"
    assert raw(emu, "GET", "/drive/v3/files", token=fresh)[0] == 401
    emu.expire_token("tok-alice")
    with pytest.raises(RefreshError, match="invalid_grant"):
        emu.service(ALICE).files().list().execute()


# -- listing ------------------------------------------------------------------------------------
def test_list_filters_by_parent_name_mime_type_and_trash_with_escaped_quotes(emu):
    drive = emu.service(ALICE)
    odd = emu.create_file(ALICE, "it's \\ odd.bin", b"x", emu.folder)
    plain = emu.create_file(ALICE, "plain.txt", b"y", emu.folder, mime_type="text/plain")
    twin = emu.create_file(ALICE, "plain.txt", b"z", emu.folder, mime_type="text/plain")   # duplicate name
    sub = emu.create_folder(ALICE, "sub", emu.folder)
    elsewhere = emu.create_file(ALICE, "plain.txt", b"w")
    drive.files().update(fileId=twin, body={"trashed": True}).execute()

    def ids(q):
        return {f["id"] for f in drive.files().list(q=q, fields="files(id)").execute()["files"]}

    inside = f"'{emu.folder}' in parents"
    assert ids(inside) == {odd, plain, twin, sub}                     # Drive lists trashed files too
    assert ids(inside + " and trashed = false") == {odd, plain, sub}
    assert ids(inside + r" and name = 'it\'s \\ odd.bin'") == {odd}
    assert ids("name = 'plain.txt'") == {plain, twin, elsewhere}
    assert ids(f"{inside} and mimeType != '{FOLDER_MIME}' and trashed = false") == {odd, plain}
    assert ids(f"mimeType = '{FOLDER_MIME}' and not name = 'sub'") == {emu.folder}
    assert ids("name contains 'ODD' or name = 'sub'") == {odd, sub}
    with pytest.raises(HttpError) as caught:
        drive.files().list(q="name = 'unterminated").execute()
    assert reason_of(caught.value) == (400, "global", "invalid")


def test_list_pages_through_every_file_once_and_trims_to_the_default_fields(emu):
    drive = emu.service(ALICE)
    made = {emu.create_file(ALICE, f"f{i}", b"x" * i, emu.folder) for i in range(7)}
    seen, token, pages = [], None, 0
    while True:
        page = drive.files().list(q=f"'{emu.folder}' in parents", pageSize=3, pageToken=token,
                                  orderBy="name desc", supportsAllDrives=True,
                                  includeItemsFromAllDrives=True).execute()
        pages += 1
        assert all(set(f) == {"kind", "id", "name", "mimeType"} for f in page["files"])
        seen += page["files"]
        token = page.get("nextPageToken")
        if not token:
            break
    assert pages == 3 and {f["id"] for f in seen} == made and len(seen) == 7
    assert [f["name"] for f in seen] == [f"f{i}" for i in reversed(range(7))]
    with pytest.raises(HttpError) as caught:
        drive.files().list(pageSize=1001).execute()
    assert caught.value.resp.status == 400


def test_accounts_see_only_what_they_own_or_what_is_shared_with_them(emu):
    inner = emu.create_folder(ALICE, "inner", emu.folder)
    shared_file = emu.create_file(ALICE, "in-shared.bin", b"s", inner)
    private = emu.create_file(ALICE, "private.bin", b"p")
    bob, carol = emu.service(BOB), emu.service(CAROL)
    bob_sees = {f["id"] for f in bob.files().list(fields="files(id)").execute()["files"]}
    assert {emu.folder, inner, shared_file} <= bob_sees and private not in bob_sees
    assert carol.files().list(fields="files(id)").execute() == {"files": []}
    for service, file_id in ((carol, shared_file), (bob, private)):
        with pytest.raises(HttpError) as caught:
            service.files().get(fileId=file_id).execute()
        assert reason_of(caught.value) == (404, "global", "notFound")
    with pytest.raises(HttpError) as caught:                     # not shared: 404, not 403
        upload(carol, "x", b"x", emu.folder, resumable=False)
    assert caught.value.resp.status == 404


# -- metadata and downloads ---------------------------------------------------------------------
def test_file_metadata_has_drives_shapes(emu):
    data = os.urandom(1000)
    file_id = emu.create_file(BOB, "m.bin", data, emu.folder)
    drive = emu.service(ALICE)
    assert set(drive.files().get(fileId=file_id).execute()) == {"kind", "id", "name", "mimeType"}
    meta = drive.files().get(fileId=file_id, fields="id,name,mimeType,parents,size,md5Checksum,sha256Checksum,"
                                                    "modifiedTime,createdTime,trashed,owners(emailAddress)").execute()
    assert meta["size"] == "1000" and meta["parents"] == [emu.folder] and meta["trashed"] is False
    assert meta["md5Checksum"] == hashlib.md5(data).hexdigest()
    assert meta["sha256Checksum"] == hashlib.sha256(data).hexdigest()
    assert RFC3339_MS.match(meta["modifiedTime"]) and RFC3339_MS.match(meta["createdTime"])
    assert meta["owners"] == [{"emailAddress": BOB}]
    folder = drive.files().get(fileId=emu.folder, fields="mimeType,size").execute()
    assert folder == {"mimeType": FOLDER_MIME}                   # folders have no size


def test_range_downloads_answer_206_with_content_range(emu):
    data = bytes(range(256)) * 40
    file_id = emu.create_file(ALICE, "r.bin", data, emu.folder)
    path = f"/drive/v3/files/{file_id}?alt=media"
    status, headers, body = raw(emu, "GET", path, headers={"Range": "bytes=100-199"})
    assert (status, headers["content-range"], body) == (206, f"bytes 100-199/{len(data)}", data[100:200])
    status, headers, body = raw(emu, "GET", path, headers={"Range": "bytes=10000-"})
    assert (status, body, headers["content-range"]) == (206, data[10000:], f"bytes 10000-10239/{len(data)}")
    assert raw(emu, "GET", path, headers={"Range": "bytes=-5"})[2] == data[-5:]
    status, headers, _ = raw(emu, "GET", path, headers={"Range": "bytes=99999-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"
    assert raw(emu, "GET", path)[:3:2] == (200, data)
    assert download(emu.service(BOB), file_id, chunksize=4000) == (data, 3)
    status, _, body = raw(emu, "GET", f"/drive/v3/files/{emu.folder}?alt=media")
    assert status == 403 and json.loads(body)["error"]["errors"][0]["reason"] == "fileNotDownloadable"


# -- uploads ------------------------------------------------------------------------------------
def test_multipart_and_media_uploads_keep_binary_content_exactly(emu):
    drive = emu.service(ALICE)
    data = b"\r\n--boundary\r\n\n\r" + os.urandom(5000) + b"\r\n"
    made = upload(drive, "mp.bin", data, emu.folder, resumable=False)
    assert emu.read(made["id"]) == data and made["md5Checksum"] == hashlib.md5(data).hexdigest()
    media = MediaIoBaseUpload(io.BytesIO(data), "image/png", resumable=False)
    plain = drive.files().create(media_body=media, fields="id,name,mimeType,parents").execute()  # uploadType=media
    assert emu.read(plain["id"]) == data and plain["mimeType"] == "image/png"
    assert plain["parents"] == [drive.files().get(fileId="root", fields="id").execute()["id"]]
    folder = drive.files().create(body={"name": "dir", "mimeType": FOLDER_MIME, "parents": [emu.folder]},
                                  fields="id,mimeType").execute()
    assert emu.file_ids(emu.folder) == [made["id"], folder["id"]]
    assert emu.calls[(ALICE, "files.create:multipart")] == 1 and emu.calls[(ALICE, "files.create:media")] == 1


def test_resumable_upload_advances_by_308_ranges_in_256_kib_chunks(emu):
    data = os.urandom(2 * CHUNK + 1234)
    media = MediaIoBaseUpload(io.BytesIO(data), "application/octet-stream", resumable=True, chunksize=CHUNK)
    request = emu.service(BOB).files().create(body={"name": "big.bin", "parents": [emu.folder]},
                                              media_body=media, fields="id,size")
    progress, response = [], None
    while response is None:
        status, response = request.next_chunk()
        if status:
            progress.append(status.resumable_progress)
    assert progress == [CHUNK, 2 * CHUNK]
    assert response["size"] == str(len(data)) and emu.read(response["id"]) == data
    assert emu.calls[(BOB, "files.create:resumable")] == 1 and emu.calls[(BOB, "upload.chunk")] == 3


def test_resumable_protocol_on_the_wire(emu):
    data = os.urandom(CHUNK + 500)
    status, headers, _ = raw(emu, "POST", "/upload/drive/v3/files?uploadType=resumable&fields=id,size",
                             body=json.dumps({"name": "wire.bin", "parents": [emu.folder]}).encode(),
                             headers={"Content-Type": "application/json; charset=UTF-8",
                                      "X-Upload-Content-Type": "application/octet-stream",
                                      "X-Upload-Content-Length": str(len(data))})
    assert status == 200 and "upload_id=" in headers["location"]
    session = urlsplit(headers["location"])
    session_path = f"{session.path}?{session.query}"
    status, headers, _ = raw(emu, "PUT", session_path, token=None, headers={"Content-Range": f"bytes */{len(data)}"})
    assert status == 308 and "range" not in headers              # nothing stored yet
    # A non-final chunk that is not a whole number of 256 KiB units: only the whole units stay.
    first = data[:CHUNK + 100]
    status, headers, _ = raw(emu, "PUT", session_path, token=None, body=first,
                             headers={"Content-Range": f"bytes 0-{len(first) - 1}/{len(data)}"})
    assert (status, headers["range"]) == (308, f"bytes=0-{CHUNK - 1}")
    status, headers, _ = raw(emu, "PUT", session_path, token=None, body=data[CHUNK + 10:],
                             headers={"Content-Range": f"bytes {CHUNK + 10}-{len(data) - 1}/{len(data)}"})
    assert status == 400                                         # a gap after what the server holds
    status, _, body = raw(emu, "PUT", session_path, token=None, body=data[CHUNK:],
                          headers={"Content-Range": f"bytes {CHUNK}-{len(data) - 1}/{len(data)}"})
    assert status == 200 and json.loads(body)["size"] == str(len(data))
    file_id = json.loads(body)["id"]
    assert emu.read(file_id) == data and emu.file_ids(emu.folder) == [file_id]


def test_updates_replace_content_rename_move_trash_and_delete(emu):
    drive = emu.service(BOB)
    file_id = upload(drive, "u.bin", b"old", emu.folder, resumable=False)["id"]
    for resumable, body in ((False, None), (False, {"description": "v3"}), (True, {"description": "v4"})):
        new = os.urandom(CHUNK + 7 if resumable else 300)      # uploadType media, multipart, resumable
        media = MediaIoBaseUpload(io.BytesIO(new), "application/octet-stream", resumable=resumable, chunksize=CHUNK)
        meta = drive.files().update(fileId=file_id, body=body, media_body=media,
                                    fields="size,md5Checksum,description").execute()
        assert emu.read(file_id) == new and meta["md5Checksum"] == hashlib.md5(new).hexdigest()
        assert meta.get("description") == (body or {}).get("description")
    assert [emu.calls[(BOB, f"files.update:{kind}")] for kind in ("media", "multipart", "resumable")] == [1, 1, 1]
    assert emu.usage(BOB) == CHUNK + 7
    other = emu.create_folder(ALICE, "other", emu.folder)
    moved = drive.files().update(fileId=file_id, body={"name": "renamed.bin"}, addParents=other,
                                 removeParents=emu.folder, fields="name,parents").execute()
    assert moved == {"name": "renamed.bin", "parents": [other]}
    with pytest.raises(HttpError) as caught:                     # one parent per file, as Drive enforces
        drive.files().update(fileId=file_id, addParents=emu.folder).execute()
    assert caught.value.resp.status == 403
    assert drive.files().update(fileId=file_id, body={"trashed": True}, fields="trashed").execute() == {"trashed": True}
    with pytest.raises(HttpError) as caught:                     # only owners delete or trash
        emu.service(ALICE).files().delete(fileId=file_id).execute()
    assert reason_of(caught.value) == (403, "global", "insufficientFilePermissions")
    drive.files().delete(fileId=file_id).execute()
    assert not emu.exists(file_id) and emu.usage(BOB) == 0
    with pytest.raises(HttpError) as caught:
        drive.files().get(fileId=file_id).execute()
    assert caught.value.resp.status == 404


# -- quota and permissions ----------------------------------------------------------------------
def test_quota_counts_against_the_owner_and_a_write_past_it_stores_nothing(emu):
    emu.set_quota(BOB, 1000)
    bob = emu.service(BOB)
    upload(bob, "fits.bin", b"b" * 600, emu.folder, resumable=False)
    about = bob.about().get(fields="user(emailAddress),storageQuota(limit,usage)").execute()
    assert about == {"user": {"emailAddress": BOB}, "storageQuota": {"limit": "1000", "usage": "600"}}
    assert emu.usage(ALICE) == 0                                  # alice's folder, bob's bytes
    for resumable in (False, True):
        with pytest.raises(HttpError) as caught:
            upload(bob, "too-big.bin", b"b" * 500, emu.folder, resumable=resumable)
        assert reason_of(caught.value) == (403, "usageLimits", "storageQuotaExceeded")
    assert len(emu.file_ids(emu.folder)) == 1 and emu.usage(BOB) == 600
    with pytest.raises(HttpError) as caught:
        bob.about().get().execute()                               # Drive requires fields here
    assert caught.value.resp.status == 400


def test_readers_cannot_write_and_sharing_needs_writer_access(emu):
    emu.service(ALICE).permissions().create(fileId=emu.folder,
                                            body={"type": "user", "role": "reader", "emailAddress": CAROL}).execute()
    carol = emu.service(CAROL)
    assert carol.files().get(fileId=emu.folder, fields="id").execute() == {"id": emu.folder}
    with pytest.raises(HttpError) as caught:
        upload(carol, "nope.bin", b"x", emu.folder)
    assert reason_of(caught.value) == (403, "global", "insufficientFilePermissions")
    with pytest.raises(HttpError) as caught:
        carol.permissions().create(fileId=emu.folder,
                                   body={"type": "user", "role": "writer", "emailAddress": CAROL}).execute()
    assert caught.value.resp.status == 403
    with pytest.raises(HttpError) as caught:
        carol.permissions().create(fileId="no-such-folder",
                                   body={"type": "user", "role": "writer", "emailAddress": BOB}).execute()
    assert reason_of(caught.value) == (404, "global", "notFound")
    assert emu.file_ids(emu.folder) == []


# -- faults -------------------------------------------------------------------------------------
def test_rate_limit_bursts_carry_drives_reasons_and_client_retries_ride_them_out(emu):
    drive = emu.service(ALICE)
    emu.faults.add("rate_limit", times=2, methods="files.list", retry_after=0)
    request = drive.files().list(q=f"'{emu.folder}' in parents", fields="files(id)")
    request._sleep = lambda seconds: None          # the library's own backoff, without the wait
    listing = request.execute(num_retries=3)
    assert listing == {"files": []} and emu.calls[(ALICE, "files.list")] == 3
    for kind, expected in (("user_rate_limit", (403, "usageLimits", "userRateLimitExceeded")),
                           ("daily_limit", (403, "usageLimits", "dailyLimitExceeded")),
                           ("rate_limit", (429, "usageLimits", "rateLimitExceeded")),
                           ("unavailable", (503, "global", "backendError")),
                           ("backend_error", (500, "global", "backendError"))):
        emu.faults.add(kind, methods="about.get", account=ALICE)
        with pytest.raises(HttpError) as caught:
            drive.about().get(fields="user").execute()
        assert reason_of(caught.value) == expected
    assert emu.faults.fired() == 7


def test_faults_can_be_limited_to_uploads_and_skip_the_first_calls(emu):
    drive = emu.service(BOB)
    emu.faults.add("unavailable", times=10, methods=["files.create:*", "upload.*"], after=1)
    upload(drive, "first.bin", b"1", emu.folder, resumable=False)        # the skipped call succeeds
    assert drive.files().list(fields="files(id)").execute()["files"]     # listings are untouched
    with pytest.raises(HttpError) as caught:
        upload(drive, "second.bin", b"2", emu.folder, resumable=False)
    assert caught.value.resp.status == 503
    emu.faults.clear()
    upload(drive, "third.bin", b"3", emu.folder, resumable=False)
    assert len(emu.file_ids(emu.folder)) == 2


def test_a_connection_dropped_mid_chunk_keeps_the_bytes_received_and_the_client_resumes(emu):
    data = os.urandom(3 * CHUNK)
    emu.faults.add("drop", methods="upload.chunk", after=1, keep=1000)
    media = MediaIoBaseUpload(io.BytesIO(data), "application/octet-stream", resumable=True, chunksize=CHUNK)
    request = emu.service(BOB).files().create(body={"name": "drop.bin", "parents": [emu.folder]},
                                              media_body=media, fields="id")
    assert request.next_chunk()[0].resumable_progress == CHUNK
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        request.next_chunk()
    session = urlsplit(request.resumable_uri)
    status, headers, _ = raw(emu, "PUT", f"{session.path}?{session.query}", token=None,
                             headers={"Content-Range": f"bytes */{len(data)}"})
    assert (status, headers["range"]) == (308, f"bytes=0-{CHUNK + 1000 - 1}")
    response = None
    while response is None:                      # next_chunk asks for the status, then goes on from there
        _, response = request.next_chunk()
    assert emu.read(response["id"]) == data and emu.faults.fired("drop") == 1


def test_a_create_with_a_generated_id_is_safe_to_retry(emu):
    drive = emu.service(ALICE)
    file_id = drive.files().generateIds(count=2).execute()["ids"][0]
    media = MediaIoBaseUpload(io.BytesIO(b"once"), "application/octet-stream", resumable=True)
    body = {"id": file_id, "name": "once.bin", "parents": [emu.folder]}
    assert drive.files().create(body=body, media_body=media, fields="id").execute() == {"id": file_id}
    with pytest.raises(HttpError) as caught:
        drive.files().create(body=body, fields="id").execute()
    assert reason_of(caught.value) == (409, "global", "duplicate")
    with pytest.raises(HttpError) as caught:
        drive.files().create(body=dict(body, id="made-up-id")).execute()
    assert reason_of(caught.value) == (400, "global", "fileIdNotUsable")
    assert emu.file_ids(emu.folder) == [file_id] and emu.read(file_id) == b"once"


def test_a_dropped_answer_can_hide_a_request_that_was_carried_out(emu):
    emu.faults.add("drop", methods="files.create", processed=True)
    body = {"name": "ghost", "mimeType": FOLDER_MIME, "parents": [emu.folder]}
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        emu.service(ALICE).files().create(body=body).execute()
    assert len(emu.file_ids(emu.folder)) == 1
    emu.faults.add("drop", methods="files.create")
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        emu.service(ALICE).files().create(body=body).execute()
    assert len(emu.file_ids(emu.folder)) == 1


def test_expired_upload_sessions_answer_404(emu):
    data = os.urandom(2 * CHUNK)
    drive = emu.service(BOB)
    for expire in (lambda: emu.faults.add("expire_session"), emu.expire_upload_sessions):
        media = MediaIoBaseUpload(io.BytesIO(data), "application/octet-stream", resumable=True, chunksize=CHUNK)
        request = drive.files().create(body={"name": "s.bin", "parents": [emu.folder]}, media_body=media)
        request.next_chunk()
        expire()
        with pytest.raises(HttpError) as caught:
            request.next_chunk()
        assert caught.value.resp.status == 404
    assert emu.file_ids(emu.folder) == []


def test_partial_ranges_serve_fewer_bytes_and_the_downloader_still_gets_everything(emu):
    data = os.urandom(10_000)
    file_id = emu.create_file(ALICE, "p.bin", data, emu.folder)
    emu.faults.add("partial_range", times=3, serve=1000)
    status, headers, body = raw(emu, "GET", f"/drive/v3/files/{file_id}?alt=media",
                                headers={"Range": "bytes=0-4999"})
    assert (status, headers["content-range"], body) == (206, "bytes 0-999/10000", data[:1000])
    assert download(emu.service(ALICE), file_id, chunksize=5000) == (data, 4)


def test_listing_lag_hides_new_files_from_lists_but_not_from_get(emu):
    emu.faults.listing_lag = 0.3
    drive = emu.service(BOB)
    made = upload(drive, "late.bin", b"late", emu.folder, resumable=False)
    query = dict(q=f"'{emu.folder}' in parents", fields="files(id)")
    assert drive.files().list(**query).execute() == {"files": []}
    assert drive.files().get(fileId=made["id"], fields="id").execute() == {"id": made["id"]}
    time.sleep(0.35)
    assert drive.files().list(**query).execute() == {"files": [{"id": made["id"]}]}


def test_tampering_changes_what_clients_read_and_the_checksums(emu):
    file_id = emu.create_file(ALICE, "t.bin", b"original", emu.folder)
    drive = emu.service(BOB)
    before = drive.files().get(fileId=file_id, fields="md5Checksum,version").execute()
    emu.tamper(file_id, b"changed!")
    after = drive.files().get(fileId=file_id, fields="md5Checksum,version").execute()
    assert after["md5Checksum"] == hashlib.md5(b"changed!").hexdigest() != before["md5Checksum"]
    assert int(after["version"]) > int(before["version"])
    assert download(drive, file_id)[0] == b"changed!"


def test_an_injected_quota_fault_and_a_real_one_look_alike(emu):
    emu.faults.add("quota_exceeded", methods="files.create:*")
    with pytest.raises(HttpError) as injected:
        upload(emu.service(ALICE), "q.bin", b"q", emu.folder, resumable=False)
    emu.set_quota(ALICE, 0)
    with pytest.raises(HttpError) as real:
        upload(emu.service(ALICE), "q.bin", b"q", emu.folder, resumable=False)
    assert reason_of(injected.value) == reason_of(real.value) == (403, "usageLimits", "storageQuotaExceeded")
    assert emu.file_ids(emu.folder) == []


def test_faults_fire_exactly_as_often_as_asked_under_concurrent_calls(emu):
    emu.faults.add("rate_limit", times=5, methods="files.get")
    statuses = []

    def hammer():
        for _ in range(5):
            statuses.append(raw(emu, "GET", f"/drive/v3/files/{emu.folder}?fields=id")[0])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 15 + [429] * 5
    assert emu.calls[(ALICE, "files.get")] == 20


def test_a_stopped_emulator_refuses_even_kept_alive_connections():
    with DriveEmulator() as emu:
        emu.add_account(ALICE, token="tok-alice")
        drive = emu.service(ALICE)
        assert drive.about().get(fields="user(emailAddress)").execute() == {"user": {"emailAddress": ALICE}}
        assert emu.calls == {(ALICE, "about.get"): 1}
    with pytest.raises((ConnectionError, http.client.HTTPException, httplib2.HttpLib2Error)):
        drive.about().get(fields="user").execute()

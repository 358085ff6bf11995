"""A loopback emulator of the Google Drive v3 API subset shardrun's Drive backend uses.

It runs the standard library's ThreadingHTTPServer on 127.0.0.1 (ephemeral port) in a background
thread, keeps every account's Drive in memory, and answers with Drive's paths, parameters, JSON
shapes and error bodies, so the real google-api-python-client talks to it unchanged:

    emu = DriveEmulator().start()            # or `with DriveEmulator() as emu:`, or the
                                             # `drive_emulator` pytest fixture (tests/drive_fixtures.py)
    alice = emu.add_account("alice@example.com", token="tok-alice", quota_bytes=15 * 2**30,
                            refresh_token="refresh-alice")
    folder = emu.create_folder("alice@example.com", "shardrun")
    emu.share(folder, "bob@example.com", role="writer")
    drive = emu.service("alice@example.com")  # build_from_document(emu.discovery_document(), ...)
    emu.stop()

Point a client at it with the shipped discovery document whose rootUrl is `emu.root_url`
(`emu.discovery_document()`); uploads go to `upload/drive/v3/`, the OAuth token endpoint is
`emu.token_uri` (POST, grant_type refresh_token or authorization_code, like
https://oauth2.googleapis.com/token).

What it emulates (and where it is as strict as Drive, so code that passes here has a chance there):
- Bearer tokens: unknown, expired (`emu.expire_token(t)`) or revoked (`emu.revoke(t)`) -> 401
  authError with WWW-Authenticate; /token issues new access tokens for live refresh tokens,
  exchanges a one-use `emu.authorization_code(email)` for an access and a refresh token (the
  installed-app sign-in), and answers 400 invalid_grant for revoked tokens and unknown codes.
- files.list (`q`, `pageSize` 1..1000, `pageToken`, `orderBy`, `fields`); like Drive it lists
  trashed files unless `trashed = false` is asked for, and without `orderBy` the order is arbitrary
  (by random id). files.get (`alt=media`, one `Range`, 206/416), files.create (metadata only),
  uploads (`uploadType=media|multipart|resumable`, create and update), files.update (metadata,
  addParents/removeParents, trashed — owners only), files.delete (owners only: 403
  insufficientFilePermissions otherwise), about.get (`fields` required, as on Drive),
  permissions.create/list/delete, files.generateIds (a create with a generated `id` is safe to
  retry: the second one is 409 duplicate; an id not generated here is 400 fileIdNotUsable).
- `fields` partial responses; without `fields` a file is {kind, id, name, mimeType} as on Drive, so
  a client that forgets to ask for size or md5Checksum finds out here. Sizes are strings, times are
  RFC 3339 UTC with milliseconds.
- Visibility: an account sees what it owns and what is shared with it, directly or through a
  folder; anything else is 404 notFound. Readers get 403 insufficientFilePermissions on writes.
- Quota: a file counts against its owner (its creator), also in another account's folder, trashed
  or not; a write that would pass the owner's limit is 403 storageQuotaExceeded and stores nothing
  (a resumable session is refused at the start when X-Upload-Content-Length already passes it).
- Resumable uploads: 200 + Location; PUT `Content-Range: bytes a-b/T` -> 308 with `Range: bytes=0-n`
  (no Range when nothing is stored) or 200 with the file; `bytes */T` asks for the status. Like
  Google's upload servers, a non-final chunk keeps only whole 256 KiB units. Expired or unknown
  sessions -> 404.

API method names (used by `emu.calls` and fault filters): files.list, files.get, files.get:media,
files.create, files.create:media, files.create:multipart, files.create:resumable, files.update,
files.update:media, files.update:multipart, files.update:resumable, upload.chunk (every PUT to a
session URL, status queries included), files.delete, files.generateIds, about.get,
permissions.create, permissions.list, permissions.delete, oauth.token. Requests refused with 401
are counted under the account None.

Inspecting and steering (no HTTP, never counted, no faults):
    emu.calls                     Counter((account email or None, method name) -> requests)
    emu.reset_calls()
    emu.usage(email); emu.set_quota(email, bytes or None)
    emu.create_folder(email, name, parent_id=None) / emu.create_file(email, name, data, parent_id=None)
    emu.share(file_id, email, role="writer")
    emu.file_ids(folder_id) / emu.metadata(file_id) / emu.exists(file_id) / emu.read(file_id)
    emu.tamper(file_id, new_bytes)        another writer changes the content behind the client's back
    emu.expire_token(token) / emu.revoke(token) / emu.credentials(email) / emu.service(email)
    emu.expire_upload_sessions()          every open resumable session -> 404
    emu.clock_offset = seconds            the server's clock runs ahead (or behind)
    emu.internal_errors                   tracebacks of emulator bugs (answered as 500)

Fault injection (`emu.faults`, thread-safe; see faults.Faults):
    emu.faults.add("rate_limit", times=3, methods="upload.*")     # 429 rateLimitExceeded x3
    emu.faults.add("user_rate_limit" | "rate_limit_403" | "daily_limit" | "quota_exceeded" |
                   "backend_error" | "bad_gateway" | "unavailable", times=..., methods=...,
                   account=..., after=N, retry_after=S)
    emu.faults.add("drop", methods="upload.chunk", keep=100_000)  # reset mid-chunk, keep 100 kB
    emu.faults.add("drop", methods="files.create*", processed=True)  # done, but the answer is lost
    emu.faults.add("expire_session")                               # the next chunk's session -> 404
    emu.faults.add("partial_range", serve=1000)                    # a Range download gets 1000 bytes
    emu.faults.listing_lag = 2.0          # new/rewritten files stay out of files.list for 2 s
    emu.faults.fired(kind=None); emu.faults.log; emu.faults.clear()
"""

from .emulator import DEFAULT_QUOTA, DriveEmulator
from .faults import Fault, Faults
from .model import FOLDER_MIME, DriveError

__all__ = ["DriveEmulator", "DEFAULT_QUOTA", "Fault", "Faults", "FOLDER_MIME", "DriveError"]

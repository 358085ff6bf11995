"""DriveEmulator: the server's lifecycle, its accounts and tokens, and helpers for tests."""

from __future__ import annotations

import json
import secrets
import socket
import sys
import threading
import traceback
from collections import Counter
from http.server import ThreadingHTTPServer
from pathlib import Path

from .faults import Faults
from .model import FOLDER_MIME, DriveError, Drive
from .server import DriveHandler
from .uploads import UploadSession

DEFAULT_QUOTA = 15 * 2**30


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.open_connections: set = set()
        self.connections_lock = threading.Lock()

    def get_request(self):
        connection, address = super().get_request()
        with self.connections_lock:
            self.open_connections.add(connection)
        return connection, address

    def shutdown_request(self, request):
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # A client hanging up (or a stop) mid-request is the network's business, not an emulator bug.
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            self.emulator.internal_errors.append(traceback.format_exc())

    def close_open_connections(self):
        """Ends kept-alive connections too, so a stopped emulator is gone for every client."""
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DriveEmulator:
    """A Drive v3 server on 127.0.0.1 (ephemeral port) backed by memory; see the package docstring."""

    def __init__(self):
        self.drive = Drive()
        self.faults = Faults(self.drive)
        self.internal_errors: list[str] = []
        self.sessions: dict[str, UploadSession] = {}
        self._lock = threading.Lock()
        self._calls: Counter = Counter()
        self._access: dict[str, str] = {}            # live access token -> email
        self._refresh: dict[str, str] = {}           # live refresh token -> email
        self._issued_from: dict[str, str] = {}       # access token -> the refresh token that made it
        self._codes: dict[str, str] = {}             # unused authorization code -> email
        self._pages: dict[str, int] = {}
        self._server = None
        self._thread = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "DriveEmulator":
        handler = type("BoundDriveHandler", (DriveHandler,), {"emulator": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.emulator = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="drive-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_open_connections()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def root_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the Drive emulator is not started; call start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def token_uri(self) -> str:
        return self.root_url + "token"

    # -- the client's view --------------------------------------------------------------------
    def discovery_document(self) -> dict:
        """The Drive v3 discovery document shipped with googleapiclient, rooted at this emulator."""
        import googleapiclient

        path = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "drive.v3.json"
        document = json.loads(path.read_text())
        document["rootUrl"] = document["mtlsRootUrl"] = self.root_url
        document["baseUrl"] = self.root_url + document["servicePath"]
        return document

    def credentials(self, email: str, with_refresh: bool = True):
        """google.oauth2 Credentials for `email` (its current access token; refreshable through /token)."""
        from google.oauth2.credentials import Credentials

        account = self.drive.accounts[email]
        if with_refresh and account.refresh_token:
            return Credentials(token=account.token, refresh_token=account.refresh_token, token_uri=self.token_uri,
                               client_id="emulator-client", client_secret="emulator-secret")
        return Credentials(token=account.token)

    def service(self, email_or_credentials):
        """A googleapiclient Drive v3 resource talking to this emulator as the given account."""
        from googleapiclient.discovery import build_from_document

        credentials = (self.credentials(email_or_credentials) if isinstance(email_or_credentials, str)
                       else email_or_credentials)
        return build_from_document(self.discovery_document(), credentials=credentials)

    # -- accounts and tokens ------------------------------------------------------------------
    def add_account(self, email: str, token: str | None = None, quota_bytes: int | None = DEFAULT_QUOTA,
                    refresh_token: str | None = None, display_name: str | None = None):
        """Registers an account with an access token (and optionally a refresh token); returns it."""
        account = self.drive.add_account(email, display_name, quota_bytes)
        account.token = token or "ya29.emu-" + secrets.token_urlsafe(24)
        account.refresh_token = refresh_token
        with self._lock:
            self._access[account.token] = email
            if refresh_token:
                self._refresh[refresh_token] = email
        return account

    def set_quota(self, email: str, quota_bytes: int | None) -> None:
        self.drive.accounts[email].quota_bytes = quota_bytes

    def account_for_token(self, token: str | None) -> str | None:
        with self._lock:
            return self._access.get(token) if token else None

    def expire_token(self, token: str) -> None:
        """The access token stops working (401 authError), as one does after an hour; refresh still works."""
        with self._lock:
            self._access.pop(token, None)

    def revoke(self, token: str) -> None:
        """Revokes an access or refresh token; a refresh token takes the access tokens it issued along."""
        with self._lock:
            self._access.pop(token, None)
            if self._refresh.pop(token, None) is not None:
                for access, source in list(self._issued_from.items()):
                    if source == token:
                        self._access.pop(access, None)

    def authorization_code(self, email: str) -> str:
        """A one-use code, as Google's consent page hands the redirect after `email` signs in."""
        code = "4/emu-" + secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = email
        return code

    def redeem(self, code: str) -> tuple[str, str] | None:
        """(access token, refresh token) for an unused authorization code, else None (the /token endpoint)."""
        with self._lock:
            email = self._codes.pop(code, None)
        if email is None:
            return None
        refresh_token = "1//emu-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[refresh_token] = email
            self.drive.accounts[email].refresh_token = refresh_token
        return self.refresh(refresh_token), refresh_token

    def refresh(self, refresh_token: str) -> str | None:
        """A new access token for a live refresh token (the /token endpoint), else None."""
        with self._lock:
            email = self._refresh.get(refresh_token)
            if email is None:
                return None
            token = "ya29.emu-" + secrets.token_urlsafe(24)
            self._access[token] = email
            self._issued_from[token] = refresh_token
            self.drive.accounts[email].token = token
            return token

    # -- bookkeeping the handler uses ---------------------------------------------------------
    def count(self, account: str | None, method: str) -> None:
        with self._lock:
            self._calls[(account, method)] += 1

    @property
    def calls(self) -> Counter:
        """A snapshot: Counter of (account email or None, API method name) -> requests received."""
        with self._lock:
            return Counter(self._calls)

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def new_session(self, session: UploadSession) -> str:
        session_id = "AEnB2U" + secrets.token_urlsafe(32)
        with self._lock:
            self.sessions[session_id] = session
        return session_id

    def expire_upload_sessions(self) -> None:
        """Every open resumable session now answers 404, as a week-old one does."""
        with self._lock:
            for session in self.sessions.values():
                session.expired = True

    def new_page_token(self, offset: int) -> str:
        token = secrets.token_urlsafe(48)
        with self._lock:
            self._pages[token] = offset
        return token

    def page_offset(self, token: str | None) -> int:
        if not token:
            return 0
        with self._lock:
            if token not in self._pages:
                raise DriveError(400, "invalid", "Invalid Value", location="pageToken")
            return self._pages[token]

    # -- direct access for tests (no HTTP, no faults, not counted) ----------------------------
    def create_folder(self, email: str, name: str, parent_id: str | None = None) -> str:
        metadata = {"name": name, "mimeType": FOLDER_MIME, "parents": [parent_id or "root"]}
        folder = self.drive.create(email, metadata, None, None)
        folder.listed_after = 0.0
        return folder.id

    def create_file(self, email: str, name: str, content: bytes, parent_id: str | None = None,
                    mime_type: str = "application/octet-stream") -> str:
        drive_file = self.drive.create(email, {"name": name, "parents": [parent_id or "root"]}, bytes(content),
                                       mime_type)
        drive_file.listed_after = 0.0
        return drive_file.id

    def share(self, file_id: str, email: str, role: str = "writer") -> None:
        owner = self.drive.files[file_id].owner
        self.drive.share(owner, file_id, email, role)

    def usage(self, email: str) -> int:
        return self.drive.usage(email)

    def file_ids(self, folder_id: str) -> list[str]:
        """Ids of the folder's children, oldest first, trashed ones included."""
        with self.drive.lock:
            children = [f for f in self.drive.files.values() if folder_id in f.parents]
            return [f.id for f in sorted(children, key=lambda f: f.created)]

    def metadata(self, file_id: str) -> dict:
        """The full files resource as the owner sees it."""
        drive_file = self.drive.files[file_id]
        return self.drive.resource(drive_file, drive_file.owner)

    def exists(self, file_id: str) -> bool:
        return file_id in self.drive.files

    def read(self, file_id: str) -> bytes:
        content = self.drive.files[file_id].content
        if content is None:
            raise ValueError(f"{file_id} is a folder or Google Docs file with no binary content")
        return bytes(content)

    def tamper(self, file_id: str, new_bytes: bytes) -> None:
        """Changes a file's content behind every client's back (new md5, modifiedTime, version)."""
        self.drive.tamper(file_id, new_bytes)

    @property
    def clock_offset(self) -> float:
        return self.drive.clock_offset

    @clock_offset.setter
    def clock_offset(self, seconds: float) -> None:
        self.drive.clock_offset = float(seconds)

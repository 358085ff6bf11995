"""The HTTP face of the emulator: Drive v3 routes, uploads, downloads and the OAuth token endpoint."""

from __future__ import annotations

import json
import re
import socket
import struct
import time
import traceback
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from .faults import ERROR_KINDS
from .model import DriveError, bad_request
from .query import Query, parse_fields, select
from .uploads import UploadRoutes, content_range

DEFAULT_FILE_FIELDS = "kind,id,name,mimeType"
ORDER_KEYS = {"createdTime", "folder", "modifiedByMeTime", "modifiedTime", "name", "name_natural",
              "quotaBytesUsed", "recency", "sharedWithMeTime", "starred", "viewedByMeTime"}


class Route:
    """What a request asks for, decided from the request line and headers alone."""

    def __init__(self, verb: str, path: str, query: dict):
        self.verb, self.path, self.query = verb, path, query
        self.file_id = self.permission_id = self.session_id = None
        self.method = self._name()

    def _name(self) -> str | None:
        verb, path, query = self.verb, self.path, self.query
        upload_type = query.get("uploadType", "")
        if path == "/token" and verb == "POST":
            return "oauth.token"
        if path == "/drive/v3/about" and verb == "GET":
            return "about.get"
        match = re.fullmatch(r"/upload/drive/v3/files(?:/([^/]+))?", path)
        if match:
            self.file_id = match.group(1)
            if "upload_id" in query and verb in ("PUT", "POST"):
                self.session_id = query["upload_id"]
                return "upload.chunk"
            if upload_type in ("media", "multipart", "resumable"):
                if verb == "POST" and not self.file_id:
                    return f"files.create:{upload_type}"
                if verb == "PATCH" and self.file_id:
                    return f"files.update:{upload_type}"
            return None
        if path == "/drive/v3/files":
            return {"GET": "files.list", "POST": "files.create"}.get(verb)
        if path == "/drive/v3/files/generateIds" and verb == "GET":
            return "files.generateIds"
        match = re.fullmatch(r"/drive/v3/files/([^/]+)/permissions(?:/([^/]+))?", path)
        if match:
            self.file_id, self.permission_id = match.groups()
            if self.permission_id:
                return {"DELETE": "permissions.delete", "GET": "permissions.get"}.get(verb)
            return {"POST": "permissions.create", "GET": "permissions.list"}.get(verb)
        match = re.fullmatch(r"/drive/v3/files/([^/]+)", path)
        if match:
            self.file_id = match.group(1)
            if verb == "GET":
                return "files.get:media" if query.get("alt") == "media" else "files.get"
            return {"PATCH": "files.update", "DELETE": "files.delete"}.get(verb)
        return None


class DriveHandler(UploadRoutes, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30                         # a client that stops mid-body cannot pin a thread forever
    # Small answers written in pieces otherwise wait on the client's delayed ACK (~40 ms each).
    disable_nagle_algorithm = True
    emulator = None                      # set on a subclass per emulator

    def log_message(self, *args):        # keep test output quiet
        pass

    def do_GET(self):
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- plumbing -----------------------------------------------------------------------------
    def _serve(self):
        emu = self.emulator
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        route = Route(self.command, parts.path, query)
        self._body_read, self._raw_body = False, b""
        try:
            if route.method is None:
                self._drain()
                raise DriveError(404, "notFound", f"Not Found: {self.command} {parts.path}")
            account = self._account(route)
            emu.count(account, route.method)
            kinds = set(ERROR_KINDS) | {"drop"}
            kinds |= {"expire_session"} if route.method == "upload.chunk" else set()
            kinds |= {"partial_range"} if route.method == "files.get:media" else set()
            fault = emu.faults.take(route.method, account, kinds)
            if fault and fault.kind in ERROR_KINDS:
                self._drain()
                raise fault.error()
            if fault and fault.kind == "drop":
                return self._drop(route, account, fault)
            if fault and fault.kind == "expire_session":
                session = emu.sessions.get(route.session_id)
                if session:
                    session.expired = True
            self._dispatch(route, account, fault)
        except DriveError as error:
            self._drain()
            headers = dict(error.headers)
            if error.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/"'
            self._json(error.status, error.body(), headers)
        except (ConnectionError, socket.timeout):
            self.close_connection = True
        except Exception:
            emu.internal_errors.append(traceback.format_exc())
            self.close_connection = True
            try:
                self._json(500, DriveError(500, "backendError", "Emulator bug; see emu.internal_errors").body())
            except OSError:
                pass

    def _account(self, route) -> str | None:
        emu = self.emulator
        if route.method == "oauth.token":
            return None
        if route.method == "upload.chunk":
            # Like Drive, the session URL itself authorises the chunks.
            session = emu.sessions.get(route.session_id)
            if session is not None:
                return session.owner
        header = self.headers.get("Authorization", "")
        if not header:
            self._drain()
            emu.count(None, route.method)
            raise DriveError(401, "required", "Login Required.", location="Authorization",
                             location_type="header")
        token = header[len("Bearer "):] if header.startswith("Bearer ") else None
        email = emu.account_for_token(token)
        if email is None:
            self._drain()
            emu.count(None, route.method)
            raise DriveError(401, "authError", "Invalid Credentials", location="Authorization",
                             location_type="header")
        return email

    def _length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def _body(self) -> bytes:
        if not self._body_read:
            self._body_read = True
            self._raw_body = self.rfile.read(self._length()) if self._length() else b""
        return self._raw_body

    def _drain(self):
        if not self._body_read:
            self._body()

    def _json_body(self) -> dict:
        raw = self._body()
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            raise bad_request("Invalid JSON payload received.", reason="parseError") from None
        if not isinstance(value, dict):
            raise bad_request("Invalid JSON payload received.", reason="parseError")
        return value

    def _send(self, status: int, body: bytes = b"", headers=None, content_type="application/json; charset=UTF-8"):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status != 204:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Date", self.date_time_string())
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value, headers=None):
        self._send(status, json.dumps(value).encode(), headers)

    def _reset(self):
        """Closes the socket with a TCP reset, as a broken network path would.

        A reset rather than a clean close: on a clean close httplib2 silently resends the request
        once, and a resumable chunk's stream body has already been consumed by then.
        """
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _drop(self, route, account, fault):
        if route.method == "upload.chunk":
            length = self._length()
            keep = min(length, int(fault.params.get("keep", length // 2)))
            partial = self.rfile.read(keep) if keep else b""
            self._body_read, self._raw_body = True, partial
            session = self.emulator.sessions.get(route.session_id)
            start = content_range(self.headers.get("Content-Range"))[0]
            if session is not None and not session.expired and start is not None and start <= len(session.data):
                with self.emulator.drive.lock:
                    session.data[start:] = partial if start + len(partial) > len(session.data) else session.data[start:]
            return self._reset()
        self._drain()
        if fault.params.get("processed"):
            self.wfile, real = _NullWriter(), self.wfile
            try:
                self._dispatch(route, account, None)
            finally:
                self.wfile = real
        self._reset()

    # -- routes -------------------------------------------------------------------------------
    def _dispatch(self, route, account, fault):
        drive, query = self.emulator.drive, route.query
        method = route.method
        if method == "oauth.token":
            return self._token()
        if method == "about.get":
            return self._about(account, query)
        if method == "files.list":
            return self._list(account, query)
        if method == "files.generateIds":
            count = _int_in(query.get("count") or "10", 1, 1000, "count")
            return self._json(200, select({"kind": "drive#generatedIds", "space": query.get("space") or "drive",
                                           "ids": drive.generate_ids(count)}, parse_fields(query.get("fields"))))
        if method == "files.get":
            drive_file = drive.lookup(account, route.file_id)
            return self._file(200, drive_file, account, query)
        if method == "files.get:media":
            return self._media(account, route.file_id, fault)
        if method == "files.create":
            drive_file = drive.create(account, self._json_body(), None, None)
            return self._file(200, drive_file, account, query)
        if method == "files.update":
            body = self._json_body()
            drive_file = drive.update(account, route.file_id, body, None,
                                      query.get("addParents", ""), query.get("removeParents", ""))
            return self._file(200, drive_file, account, query)
        if method == "files.delete":
            self._drain()
            drive.delete(account, route.file_id)
            return self._send(204)
        if method.startswith("files.create:") or method.startswith("files.update:"):
            return self._upload(account, route)
        if method == "upload.chunk":
            return self._chunk(route)
        if method == "permissions.create":
            body = self._json_body()
            if body.get("type") != "user" or not body.get("emailAddress"):
                raise bad_request("The permission type field is required and only 'user' is emulated.",
                                  location="permission.type", reason="invalid")
            drive.share(account, route.file_id, body["emailAddress"], body.get("role", ""))
            return self._json(200, select(self._permission(body["emailAddress"], body["role"]),
                                          parse_fields(query.get("fields") or "kind,id,type,role")))
        if method == "permissions.list":
            drive_file = drive.lookup(account, route.file_id)
            entries = [self._permission(drive_file.owner, "owner")]
            entries += [self._permission(email, role) for email, role in drive_file.permissions.items()]
            return self._json(200, select({"kind": "drive#permissionList", "permissions": entries},
                                          parse_fields(query.get("fields"))))
        if method == "permissions.delete":
            self._drain()
            drive.unshare(account, route.file_id, route.permission_id)
            return self._send(204)
        raise DriveError(404, "notFound", f"Not Found: {method}")

    def _permission(self, email: str, role: str) -> dict:
        account = self.emulator.drive.accounts.get(email)
        return {"kind": "drive#permission", "id": account.permission_id if account else email,
                "type": "user", "role": role, "emailAddress": email}

    def _file(self, status, drive_file, viewer, query, headers=None):
        resource = self.emulator.drive.resource(drive_file, viewer)
        self._json(status, select(resource, parse_fields(query.get("fields") or DEFAULT_FILE_FIELDS)), headers)

    def _about(self, account, query):
        if not query.get("fields"):
            raise DriveError(400, "required", "The 'fields' parameter is required for this method.",
                             location="fields")
        drive = self.emulator.drive
        user = drive.accounts[account]
        quota = {"usage": str(drive.usage(account)), "usageInDrive": str(drive.usage(account)),
                 "usageInDriveTrash": str(drive.trash_usage(account))}
        if user.quota_bytes is not None:
            quota["limit"] = str(user.quota_bytes)
        about = {"kind": "drive#about", "user": user.user_resource(me=True), "storageQuota": quota,
                 "maxUploadSize": "5242880000000", "appInstalled": False}
        self._json(200, select(about, parse_fields(query["fields"])))

    def _list(self, account, query):
        drive = self.emulator.drive
        page_size = _int_in(query.get("pageSize") or "100", 1, 1000, "pageSize")
        parsed = Query(query.get("q"))
        now = time.monotonic()
        with drive.lock:
            found = [f for f in drive.visible(account)
                     if f.listed_after <= now and parsed.matches(f, drive, account)]
            found = _ordered(found, query.get("orderBy"))
            offset = self.emulator.page_offset(query.get("pageToken"))
            page = found[offset:offset + page_size]
            result = {"kind": "drive#fileList", "incompleteSearch": False,
                      "files": [drive.resource(f, account) for f in page]}
        if offset + page_size < len(found):
            result["nextPageToken"] = self.emulator.new_page_token(offset + page_size)
        fields = parse_fields(query.get("fields") or f"kind,incompleteSearch,nextPageToken,files({DEFAULT_FILE_FIELDS})")
        self._json(200, select(result, fields))

    def _media(self, account, file_id, fault):
        drive_file = self.emulator.drive.lookup(account, file_id)
        if drive_file.content is None:
            raise DriveError(403, "fileNotDownloadable", "Only files with binary content can be downloaded. "
                             "Use Export with Docs Editors files.", location="alt")
        content = drive_file.content
        size = len(content)
        header = self.headers.get("Range")
        if not header:
            return self._send(200, content, content_type=drive_file.mime_type)
        start, end = _byte_range(header, size)
        if start == "ignore":                      # a Range we do not understand: HTTP says ignore it
            return self._send(200, content, content_type=drive_file.mime_type)
        if start is None:
            return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
        if fault and fault.kind == "partial_range":
            end = min(end, start + max(1, int(fault.params.get("serve", (end - start + 1) // 2))) - 1)
        self._send(206, content[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{size}"},
                   content_type=drive_file.mime_type)

    # -- OAuth --------------------------------------------------------------------------------
    def _token(self):
        form = {key: values[-1] for key, values in parse_qs(self._body().decode(), keep_blank_values=True).items()}
        grant = form.get("grant_type")
        if grant not in ("refresh_token", "authorization_code"):
            return self._json(400, {"error": "unsupported_grant_type",
                                    "error_description": f"Invalid grant_type: {grant}"})
        if not (form.get("client_id") or self.headers.get("Authorization", "").startswith("Basic ")):
            # Like Google, the client may name itself in the form or with HTTP basic auth.
            return self._json(401, {"error": "invalid_client", "error_description": "The OAuth client was not found."})
        answer = {"expires_in": 3599, "token_type": "Bearer",
                  "scope": form.get("scope") or "https://www.googleapis.com/auth/drive"}
        if grant == "refresh_token":
            answer["access_token"] = self.emulator.refresh(form.get("refresh_token", ""))
        else:
            issued = self.emulator.redeem(form.get("code", ""))
            if issued is not None:
                answer["access_token"], answer["refresh_token"] = issued
        if answer.get("access_token") is None:
            return self._json(400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
        self._json(200, answer, {"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate"})


class _NullWriter:
    def write(self, data):
        return len(data)

    def flush(self):
        pass


def _int_in(text: str, low: int, high: int, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise DriveError(400, "invalid", f"Invalid value '{text}'. Values must be within the range: "
                         f"[{low}, {high}]", location=name)
    return value


def _ordered(files, order_by: str | None):
    if not order_by:
        return sorted(files, key=lambda f: f.id)      # Drive promises no order; ids are random
    keys = []
    for part in order_by.split(","):
        words = part.split()
        if not words or words[0] not in ORDER_KEYS or (len(words) > 1 and words[1:] != ["desc"]):
            raise DriveError(400, "invalid", f"Invalid value for orderBy: {order_by}", location="orderBy")
        keys.append((words[0], len(words) > 1))
    for key, descending in reversed(keys):
        getter = {"name": lambda f: f.name, "name_natural": lambda f: f.name, "createdTime": lambda f: f.created,
                  "modifiedTime": lambda f: f.modified, "folder": lambda f: not f.is_folder,
                  "quotaBytesUsed": lambda f: f.size}.get(key, lambda f: f.modified)
        files = sorted(files, key=getter, reverse=descending)
    return files


def _byte_range(header: str, size: int):
    """(start, end) inclusive for one `bytes=` range; (None, None) if unsatisfiable, ("ignore", None) if malformed."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or match.groups() == ("", ""):
        return "ignore", None
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(size - 1, int(last)) if last else size - 1
    if start >= size or start > end:
        return None, None
    return start, end

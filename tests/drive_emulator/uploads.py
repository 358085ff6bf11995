"""Uploads: media, multipart and resumable (sessions, chunks, 308 status answers), for create and update."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .model import DriveError, bad_request, quota_exceeded

UPLOAD_GRANULARITY = 256 * 1024


@dataclass
class UploadSession:
    """A resumable upload in progress: what it will create or update, and the bytes so far."""

    owner: str
    file_id: str | None                 # None: files.create; else files.update of this file
    metadata: dict
    mime_type: str | None
    total: int | None
    params: dict
    data: bytearray = field(default_factory=bytearray)
    expired: bool = False
    result_id: str | None = None


class UploadRoutes:
    """The upload half of the request handler (a mixin: it uses the handler's body and reply helpers)."""

    # -- uploads ------------------------------------------------------------------------------
    def _upload(self, account, route):
        drive, upload_type = self.emulator.drive, route.query["uploadType"]
        content_type = self.headers.get("Content-Type", "")
        if upload_type == "resumable":
            metadata = self._json_body()
            total = self.headers.get("X-Upload-Content-Length")
            total = int(total) if total not in (None, "") else None
            session = UploadSession(account, route.file_id, metadata, self.headers.get("X-Upload-Content-Type"),
                                    total, dict(route.query))
            with drive.lock:
                # Drive checks the metadata and the declared size when the session opens.
                if route.file_id:
                    target = drive.lookup(account, route.file_id, need="writer")
                    growth, owner = (total or 0) - target.size, target.owner
                else:
                    for parent in metadata.get("parents") or ["root"]:
                        drive.lookup(account, parent, need="writer")
                    growth, owner = total or 0, account
                if growth > 0 and drive.accounts[owner].quota_bytes is not None and \
                        drive.usage(owner) + growth > drive.accounts[owner].quota_bytes:
                    raise quota_exceeded()
            session_id = self.emulator.new_session(session)
            location = (f"{self.emulator.root_url}upload/drive/v3/files{'/' + route.file_id if route.file_id else ''}"
                        f"?uploadType=resumable&upload_id={session_id}")
            return self._send(200, b"", {"Location": location, "X-GUploader-UploadID": session_id})
        if upload_type == "media":
            metadata, content, media_mime = {}, self._body(), content_type or None
        else:
            metadata, content, media_mime = _multipart(content_type, self._body())
        self._finish(account, route.file_id, metadata, content, media_mime, route.query)

    def _finish(self, account, file_id, metadata, content, media_mime, query):
        drive = self.emulator.drive
        if file_id:
            if media_mime and "mimeType" not in metadata:
                metadata = dict(metadata, mimeType=media_mime) if not media_mime.startswith("multipart/") else metadata
            drive_file = drive.update(account, file_id, metadata, content,
                                      query.get("addParents", ""), query.get("removeParents", ""))
        else:
            drive_file = drive.create(account, metadata, content, media_mime)
        self._file(200, drive_file, account, query)
        return drive_file

    def _chunk(self, route):
        emu = self.emulator
        session = emu.sessions.get(route.session_id)
        if session is None or session.expired:
            self._drain()
            raise DriveError(404, "notFound", "Upload session not found or expired; start the upload again.")
        body = self._body()
        header = self.headers.get("Content-Range")
        with emu.drive.lock:
            if session.result_id is not None:
                drive_file = emu.drive.files.get(session.result_id)
                if drive_file is None:
                    raise DriveError(404, "notFound", "Upload session not found or expired.")
                return self._file(200, drive_file, session.owner, session.params)
            if header is None:                     # the whole content in one request
                start, end, total = 0, len(body) - 1, len(body)
            else:
                start, end, total = content_range(header)
                if start is None and end is None and total is None:
                    raise bad_request(f"Invalid Content-Range header: {header}")
            if total is not None and session.total is not None and total != session.total:
                raise bad_request(f"Content-Range total {total} differs from the declared size {session.total}.")
            total = total if total is not None else session.total
            if start is not None:
                if end - start + 1 != len(body):
                    raise bad_request("The Content-Range does not match the request body's length.")
                have = len(session.data)
                if start > have:
                    raise bad_request(f"Invalid request. According to the Content-Range header, the upload offset "
                                      f"is {start} byte(s), which exceeds already uploaded size of {have} byte(s).")
                before = have
                session.data[start:] = body if start + len(body) > have else session.data[start:]
                if total is not None and len(session.data) > total:
                    del session.data[before:]
                    raise bad_request("The upload carries more bytes than its declared size.")
                final = total is not None and len(session.data) == total
                if not final:
                    # Like Google's upload servers, keep only whole 256 KiB units of a non-final chunk.
                    keep = max(before, len(session.data) // UPLOAD_GRANULARITY * UPLOAD_GRANULARITY)
                    del session.data[keep:]
            if total is not None and len(session.data) == total:
                try:
                    drive_file = self._finish(session.owner, session.file_id, session.metadata,
                                              bytes(session.data), session.mime_type, session.params)
                except DriveError:
                    if start is not None:
                        del session.data[start:]
                    raise
                session.result_id = drive_file.id
                return None
        headers = {"Range": f"bytes=0-{len(session.data) - 1}"} if session.data else {}
        headers["X-GUploader-UploadID"] = route.session_id
        self._send(308, b"", headers, content_type="text/plain; charset=utf-8")


def content_range(header: str | None):
    """(start, end, total) from `bytes a-b/T`, `bytes a-b/*`, `bytes */T` (start=end=None)."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None, None
    first, last, total = match.groups()
    total = None if total == "*" else int(total)
    if first is None:
        return None, None, total
    return int(first), int(last), total


def _multipart(content_type: str, body: bytes):
    """(metadata, media, media mime) from a multipart/related body, as Drive's multipart upload takes it."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/related") or not match:
        raise bad_request("Multipart uploads need Content-Type multipart/related with a boundary.")
    delimiter = b"--" + match.group(1).encode()
    pieces = body.split(delimiter)
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        newline = b"\r\n" if piece.startswith(b"\r\n") else b"\n"
        piece = piece[len(newline):]
        if piece.endswith(newline):
            piece = piece[: -len(newline)]
        head, _, payload = piece.partition(newline + newline)
        headers = {}
        for line in head.split(newline):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload))
    if len(parts) != 2:
        raise bad_request("A multipart upload needs exactly two parts: metadata, then media.")
    try:
        metadata = json.loads(parts[0][1] or b"{}")
    except ValueError:
        raise bad_request("Invalid JSON payload received in the metadata part.", reason="parseError") from None
    return metadata, parts[1][1], parts[1][0].get("content-type")

"""Moving bytes to and from Drive: multipart and resumable uploads, ranged streaming downloads.

Uploads larger than one chunk use Drive's resumable protocol through google-api-python-client's
MediaIoBaseUpload. When a chunk's connection drops, the client's next call asks Drive how much
arrived (`Content-Range: bytes */total`) and continues from Drive's `Range`, so retrying a chunk
(drive_api's tenacity loop) resumes the session instead of starting over. A session Drive no
longer knows (404: expired) is replaced by a new one from byte 0.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO, Callable

from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseUpload

from shardrun.errors import IntegrityError, TransientError
from shardrun.storage.drive.api import DriveClient, status_of

OBJECT_MIME = "application/octet-stream"
UPLOAD_GRANULARITY = 256 * 1024  # Drive takes resumable chunks in multiples of this
MAX_SESSIONS = 3  # fresh resumable sessions tried when Drive forgets one


class _SessionExpired(Exception):
    """Drive no longer knows the resumable upload session: start a new one."""


class Replaced(IntegrityError):
    """The object changed size between two ranged requests: it was replaced while being read."""


def send_media(client: DriveClient, what: str, make_request: Callable[[MediaIoBaseUpload], Any],
               source: BinaryIO, size: int, chunk_bytes: int) -> dict:
    """Uploads `size` bytes of `source` with the request `make_request(media)` builds; returns
    Drive's answer (the file's metadata). One multipart request up to `chunk_bytes`, else a
    resumable session in chunks of `chunk_bytes`."""
    if size <= chunk_bytes:
        source.seek(0)
        data = source.read()
        return client.execute(what, lambda: make_request(MediaIoBaseUpload(io.BytesIO(data), OBJECT_MIME)))
    for _ in range(MAX_SESSIONS):
        source.seek(0)
        upload = make_request(MediaIoBaseUpload(source, OBJECT_MIME, chunksize=chunk_bytes, resumable=True))
        try:
            return _send_chunks(client, what, upload)
        except _SessionExpired:
            continue
    raise TransientError(f"{client.subject}: {what}: Drive dropped {MAX_SESSIONS} upload sessions in a row; "
                         "try again later")


def _send_chunks(client: DriveClient, what: str, upload) -> dict:
    def next_chunk():
        try:
            return upload.next_chunk(http=client.http())
        except HttpError as e:
            # A 404 (or 410) once the session exists means Drive has forgotten it.
            if upload.resumable_uri is not None and status_of(e) in (404, 410):
                raise _SessionExpired() from e
            raise

    while True:
        _, response = client.run(what, next_chunk)
        if response is not None:
            return response


def fetch_range(client: DriveClient, what: str, file_id: str, start: int, end: int,
                on_404: Callable[[HttpError], Exception]) -> tuple[bytes, int]:
    """Returns bytes `start`..`end` of a file (inclusive; fewer if Drive sends fewer) and its size."""
    def request():
        req = client.files.get_media(fileId=file_id, supportsAllDrives=True)
        req.headers["range"] = f"bytes={start}-{end}"
        req.postproc = lambda resp, content: (resp, content)  # keep the status and Content-Range
        return req

    resp, content = client.execute(what, request, on_404=on_404)
    if resp.status == 206:
        return content, int(resp.get("content-range", "*/-1").rpartition("/")[2])
    return content[start:end + 1], len(content)  # the whole object: the Range was ignored


class RangeReader(io.RawIOBase):
    """A read-only stream of one file from `offset`, fetched in ranged requests of `chunk_bytes`,
    so a large object never sits in memory whole. `fetch(start, end)` is fetch_range bound to
    the file."""

    def __init__(self, fetch: Callable[[int, int], tuple[bytes, int]], size: int, offset: int,
                 chunk_bytes: int, label: str):
        super().__init__()
        self.fetch = fetch
        self.size = size
        self.position = offset
        self.chunk_bytes = chunk_bytes
        self.label = label  # "<store> (account x): <key>", for messages
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        if self._buffer:
            return True
        if self.position >= self.size:
            return False
        data, total = self.fetch(self.position, min(self.position + self.chunk_bytes, self.size) - 1)
        if total != self.size:
            raise Replaced(f"{self.label} was replaced while it was being read ({self.size:,} bytes, now {total:,})")
        if not data:
            raise TransientError(f"{self.label}: Drive sent no bytes at offset {self.position:,} of {self.size:,}")
        self._buffer = data
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if size == 0 or not self._fill():
            return b""
        block, self._buffer = self._buffer[:size], self._buffer[size:]
        self.position += len(block)
        return block

    def readall(self) -> bytes:
        parts = []
        while self._fill():
            parts.append(self._buffer)
            self.position += len(self._buffer)
            self._buffer = b""
        return b"".join(parts)

    def readinto(self, target) -> int:
        block = self.read(len(target))
        target[:len(block)] = block
        return len(block)

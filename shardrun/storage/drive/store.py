"""The Google Drive store: one account's folder, `drive://<folder-id>`, through the Drive v3 API.

Keys map to nested folders: `job/journal/e1.json` is the file `e1.json` in the folder `journal`
in the folder `job` in the account's root folder. Drive addresses files by id, not by path, and
allows two files with one name in a folder, so:

- **Duplicate names.** Of several files with one name in a folder, the oldest (`createdTime`,
  then id) wins, as for folders. Every reader applies the same rule, so all agree; the next write
  of the key updates the winner and deletes the others. The oldest, not the newest: a journal
  event is written once, so a reader that folded the first copy never has to change its mind
  when a later duplicate appears, and one that met a later copy first (the earlier one hidden by
  a lagging listing) sees the listed time go back and re-reads (`duplicate_copies`, Ledger.sync).
- **Idempotent creates.** A new small file gets an id reserved up front (files.generateIds), so
  a create retried after its answer was lost cannot make a second file: Drive answers 409, and
  the file already under that id, with the md5 sent, is the success the lost answer would have
  been. Of several *folders*
  with one name (two writers created it at once), the oldest (`createdTime`, then id) receives
  new files and all are read, so a race never splits the tree.
- **Lagging listings.** `files.list` may miss a file written moments ago, but `files.get` by id
  never does. Ids of files this process wrote or found are cached, so a key missing from the
  listing is still found by its id.
- **Atomic puts.** A new file appears in Drive only when its upload completes (a resumable
  session's bytes are invisible until the last chunk), and an update replaces the content in one
  step (a new head revision); a reader therefore sees the old object or the new one. A read that
  takes several ranged requests is checked against the md5 Drive recorded, and read again if the
  object was replaced meanwhile.
- **Server time.** `Stat.mtime` is Drive's `modifiedTime`, set by Drive's clock.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime
from typing import Any, BinaryIO, Iterator

from shardrun.storage.base import Digest, Folder, Stat, Store, Usage
from shardrun.errors import (
    IntegrityError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    StoreError,
    TransientError,
)
from shardrun.paths import validate_key, validate_prefix
from shardrun.storage.drive.api import Conflict, DriveClient, RetryPolicy, quota_words
from shardrun.storage.drive.transfer import (
    OBJECT_MIME,
    UPLOAD_GRANULARITY,
    RangeReader,
    Replaced,
    fetch_range,
    send_media,
)

FOLDER_MIME = "application/vnd.google-apps.folder"
GOOGLE_APPS_PREFIX = "application/vnd.google-apps."  # Docs, Sheets, shortcuts: not objects
FILE_FIELDS = "id,name,mimeType,size,md5Checksum,sha256Checksum,modifiedTime,createdTime,trashed"
NAME_FIELDS = "id,name,mimeType,modifiedTime,createdTime"
MIB = 1 << 20
DEFAULT_CHUNK = 8 * MIB
RECOUNT_MARGIN = 0.95
READ_TRIES = 5  # reads of an object that keeps being replaced meanwhile
FOLDER_REFRESH_S = 60.0
LISTED_KEPT = 20_000
ID_BATCH = 50  # file ids reserved per files.generateIds call  # listing metadata kept for the reads that usually follow

def _quoted(name: str) -> str:
    """Returns `name` as a string literal of Drive's query language."""
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def drive_time(text: str) -> float:
    """Returns seconds since the epoch of one of Drive's RFC 3339 timestamps."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _oldest_first(folders: list[dict]) -> list[dict]:
    return sorted(folders, key=lambda f: (drive_time(f.get("createdTime") or f["modifiedTime"]), f["id"]))


def _is_object(meta: dict) -> bool:
    return not meta.get("mimeType", "").startswith(GOOGLE_APPS_PREFIX) and not meta.get("trashed")


def _usable_name(name: str) -> bool:
    # Drive allows '/' and '..' in names; such files (made by hand) cannot be keys.
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


class DriveStore(Store):
    duplicate_copies = True  # Drive allows two files of one name

    def __init__(self, folder_id: str, credentials: Any, root_url: str | None = None,
                 quota_bytes: int | None = None, url: str | None = None, *, account_name: str | None = None,
                 chunk_bytes: int = DEFAULT_CHUNK, retry: RetryPolicy | None = None, timeout_s: float = 60.0,
                 folder_refresh_s: float = FOLDER_REFRESH_S):
        """`credentials`: google-auth credentials, or a function returning them on first use.

        `quota_bytes` caps what shardrun lets the account hold, below Drive's own limit;
        `chunk_bytes` (a multiple of 256 KiB) sizes resumable upload chunks and ranged downloads.
        """
        if not folder_id or "/" in folder_id:
            raise StoreError(f"drive://{folder_id}: a Drive store URL is drive://<folder-id> "
                             "(the id at the end of the folder's web address)")
        if chunk_bytes <= 0 or chunk_bytes % UPLOAD_GRANULARITY:
            raise StoreError(f"drive chunk size {chunk_bytes:,} bytes must be a positive multiple of "
                             f"{UPLOAD_GRANULARITY:,} (256 KiB)")
        self.folder_id = folder_id
        self.url = url or f"drive://{folder_id}"
        self.account_name = account_name
        self.quota_bytes = quota_bytes
        self.chunk_bytes = chunk_bytes
        self.folder_refresh_s = folder_refresh_s
        self.subject = f"{self.url} (account {account_name})" if account_name else self.url
        provider = credentials if callable(credentials) else (lambda: credentials)
        self.client = DriveClient(provider, subject=self.subject, root_url=root_url, retry=retry, timeout_s=timeout_s)
        # folder path -> (ids oldest first, when looked up); "" is the root. Looked up again after
        # FOLDER_REFRESH_S, so a duplicate folder another writer made while listings lagged is
        # found and read (and new files go to the oldest).
        self._folders: dict[str, tuple[list[str], float]] = {}
        self._file_ids: dict[str, str] = {}  # key -> id of the file last written or found
        self._listed: dict[str, dict] = {}  # key -> metadata from the last listing, used by one read
        self._lock = threading.Lock()
        self._folder_lock = threading.Lock()  # one thread at a time creates folders
        self._identity: str | None = None
        self._used: int | None = None  # account usage, counted for the quota_bytes cap
        self._writes_since_count = 0
        self._spare_ids: list[str] = []  # reserved with files.generateIds, one per new small file

    # -- folders ------------------------------------------------------------------------------

    def _root(self) -> list[str]:
        with self._lock:
            if "" in self._folders:
                return self._folders[""][0]
        meta = self.client.execute(
            f"opening folder {self.folder_id}",
            lambda: self.client.files.get(fileId=self.folder_id, fields="id,mimeType,trashed", supportsAllDrives=True),
            on_404=lambda e: self._folder_unavailable())
        if meta.get("mimeType") != FOLDER_MIME or meta.get("trashed"):
            raise StoreError(f"{self.subject}: {self.folder_id} is not a folder (or is in the trash); "
                             "a Drive store URL names a folder: drive://<folder-id>")
        with self._lock:
            self._folders[""] = ([self.folder_id], float("inf"))
        return [self.folder_id]

    def _folder_unavailable(self) -> PermissionDenied:
        try:
            who = self.identity() or "this account"
        except StoreError:
            who = "this account"
        return PermissionDenied(f"{self.subject}: folder {self.folder_id} does not exist or is not shared with "
                                f"{who}; check the id, and share the folder with that account as editor")

    def _folder_ids(self, path: str, create: bool = False) -> list[str] | None:
        """Returns the ids of the folder at `path` (oldest first), creating it if asked; None if absent."""
        if path == "":
            return self._root()
        with self._lock:
            cached, looked_up = self._folders.get(path, ([], 0.0))
        if cached and time.monotonic() - looked_up < self.folder_refresh_s:
            return cached
        parent, _, name = path.rpartition("/")
        parent_ids = self._folder_ids(parent, create)
        if parent_ids is None:
            return None
        found = self._children(parent_ids, name=name, folders=True)
        if not found and not cached and create:
            with self._folder_lock:
                found = self._children(parent_ids, name=name, folders=True)
                if not found:
                    found = self._make_folder(parent_ids[0], name)
        ids = [f["id"] for f in _oldest_first(found)]
        ids += [i for i in cached if i not in ids]  # known here but not listed (yet): keep reading it
        if not ids:
            return None
        self._remember_folder(path, ids)
        return ids

    def _remember_folder(self, path: str, ids: list[str]) -> None:
        with self._lock:
            self._folders[path] = (ids, time.monotonic())

    def _make_folder(self, parent_id: str, name: str) -> list[dict]:
        created = self.client.execute(
            f"creating folder {name}",
            lambda: self.client.files.create(body={"name": name, "mimeType": FOLDER_MIME, "parents": [parent_id]},
                                             fields=NAME_FIELDS, supportsAllDrives=True))
        # Another writer may have created the same folder at the same moment: look again, so
        # that both settle on the oldest. Our own may not be listed yet (lag): keep it anyway.
        again = self._children([parent_id], name=name, folders=True)
        return again if any(f["id"] == created["id"] for f in again) else again + [created]

    def _children(self, parent_ids: list[str], name: str | None = None, folders: bool | None = None,
                  fields: str = FILE_FIELDS) -> list[dict]:
        """Returns the untrashed children of the folders (of one name, only folders or only files)."""
        clauses = ["(" + " or ".join(f"{_quoted(pid)} in parents" for pid in parent_ids) + ")", "trashed = false"]
        if name is not None:
            clauses.append(f"name = {_quoted(name)}")
        if folders is not None:
            clauses.append(f"mimeType {'=' if folders else '!='} '{FOLDER_MIME}'")
        query = " and ".join(clauses)
        results: list[dict] = []
        token = None
        while True:
            page = self.client.execute(
                "listing " + (name or "a folder"),
                lambda: self.client.files.list(q=query, fields=f"nextPageToken,files({fields})", pageSize=1000,
                                               pageToken=token, supportsAllDrives=True,
                                               includeItemsFromAllDrives=True, spaces="drive"))
            results.extend(page.get("files", []))
            token = page.get("nextPageToken")
            if not token:
                return results

    # -- finding files ------------------------------------------------------------------------

    def _get_by_id(self, file_id: str) -> dict | None:
        try:
            meta = self.client.execute(
                f"reading metadata of {file_id}",
                lambda: self.client.files.get(fileId=file_id, fields=FILE_FIELDS, supportsAllDrives=True))
        except NotFound:
            return None
        return meta if _is_object(meta) else None

    def _candidates(self, key: str) -> list[dict]:
        """Returns the files stored under `key`, the winner first (see the module docstring)."""
        folder, _, name = key.rpartition("/")
        ids = self._folder_ids(folder)
        found = [f for f in self._children(ids, name=name, folders=False) if _is_object(f)] if ids else []
        with self._lock:
            cached = self._file_ids.get(key)
        if cached and not any(f["id"] == cached for f in found):
            # Written or found here but missing from the listing (lag), or deleted since.
            meta = self._get_by_id(cached)
            if meta is not None and meta.get("name") == name:
                found.append(meta)
            else:
                with self._lock:
                    self._file_ids.pop(key, None)
        found = _oldest_first(found)
        if found:
            with self._lock:
                self._file_ids[key] = found[0]["id"]
        return found

    def _find(self, key: str) -> dict:
        found = self._candidates(key)
        if not found:
            raise NotFound(f"{self.url}: no object {key}")
        return found[0]

    def _stat_of(self, key: str, meta: dict, digest: Digest | None = None) -> Stat:
        sha256 = meta.get("sha256Checksum") or (digest.sha256 if digest else None)
        return Stat(key, int(meta.get("size", 0)), drive_time(meta["modifiedTime"]), meta.get("md5Checksum"), sha256)

    # -- primitives ---------------------------------------------------------------------------

    def _stat(self, key: str) -> Stat:
        return self._stat_of(key, self._find(key))

    def _list(self, prefix: str) -> list[Stat]:
        return [self._stat_of(key, meta) for key, meta in self._walk(prefix, FILE_FIELDS)]

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(key for key, _ in self._walk(prefix, FILE_FIELDS))

    def _walk(self, prefix: str, fields: str) -> Iterator[tuple[str, dict]]:
        validate_prefix(prefix)
        folder, _, start = prefix.rpartition("/")
        ids = self._folder_ids(folder)
        if ids is None:
            return
        yield from self._walk_folder(ids, f"{folder}/" if folder else "", start, fields)

    def _walk_folder(self, ids: list[str], rel: str, start: str, fields: str) -> Iterator[tuple[str, dict]]:
        files, folders = self._one_folder(ids, rel, start, fields)
        yield from files
        for name, sub_ids in folders:
            yield from self._walk_folder(sub_ids, f"{rel}{name}/", "", fields)

    def _one_folder(self, ids: list[str], rel: str, start: str,
                    fields: str) -> tuple[list[tuple[str, dict]], list[tuple[str, list[str]]]]:
        """Lists the folder (all its copies) once: (key, winner) of each object named `start...`,
        and (name, ids oldest first) of each sub-folder, remembered for the lookups that follow."""
        files: dict[str, list[dict]] = {}
        folders: dict[str, list[dict]] = {}
        for child in self._children(ids, fields=fields):
            name = child.get("name", "")
            if not name.startswith(start) or not _usable_name(name):
                continue
            if child.get("mimeType") == FOLDER_MIME:
                folders.setdefault(name, []).append(child)
            elif _is_object(child):
                files.setdefault(name, []).append(child)
        objects = []
        for name, same in files.items():
            key = rel + name
            winner = _oldest_first(same)[0]
            with self._lock:
                self._file_ids[key] = winner["id"]
                if len(self._listed) >= LISTED_KEPT:
                    self._listed.clear()
                self._listed[key] = winner
            objects.append((key, winner))
        subfolders = []
        for name, same in folders.items():
            sub_ids = [f["id"] for f in _oldest_first(same)]
            self._remember_folder(rel + name, sub_ids)
            subfolders.append((name, sub_ids))
        return objects, subfolders

    def _list_folder(self, prefix: str) -> Folder:
        # One files.list per 1,000 children of the folder (of every copy of it), however deep the
        # tree below: the journal's sync lists a few hour folders of a year-long job this way.
        folder = prefix.rstrip("/")
        ids = self._folder_ids(folder)
        if ids is None:
            return Folder([], [])
        objects, folders = self._one_folder(ids, prefix, "", FILE_FIELDS)
        return Folder([self._stat_of(key, meta) for key, meta in objects], [name for name, _ in folders])

    def _read(self, key: str, offset: int = 0) -> BinaryIO:
        return self._reader(key, self._find(key), offset)

    def get_bytes(self, key: str, expected_md5: str | None = None) -> bytes:
        data, _ = self._get_verified(validate_key(key))
        if expected_md5 is not None and hashlib.md5(data).hexdigest() != expected_md5:
            raise IntegrityError(f"{self.url}: {key} has md5 {hashlib.md5(data).hexdigest()}, expected {expected_md5}")
        return data

    def get_with_stat(self, key: str) -> tuple[bytes, Stat]:
        data, meta = self._get_verified(validate_key(key))
        return data, self._stat_of(key, meta)

    def _get_verified(self, key: str) -> tuple[bytes, dict]:
        """Returns the object's bytes and metadata, the bytes checked against Drive's md5."""
        # The metadata a listing just returned saves a lookup per object (a journal sync reads
        # every new event): if the object changed since, the md5 check below sees it.
        with self._lock:
            meta = self._listed.pop(key, None)
        meta = meta or self._find(key)
        for _ in range(READ_TRIES):
            try:
                with self._reader(key, meta, 0) as reader:
                    data = reader.read()
            except Replaced:
                meta = self._find(key)
                continue
            got = hashlib.md5(data).hexdigest()
            if meta.get("md5Checksum") in (None, got):
                return data, meta
            fresh = self._find(key)
            if fresh["id"] == meta["id"] and fresh.get("md5Checksum") == meta.get("md5Checksum"):
                raise IntegrityError(f"{self.url}: {key} read back with md5 {got}, but Drive records "
                                     f"{meta.get('md5Checksum')}: damaged in transfer or on Drive")
            meta = fresh  # replaced between reading its metadata and its bytes: read the new version
        raise TransientError(f"{self.subject}: {key} was replaced {READ_TRIES} times while being read; "
                             "try again when its writers are quieter")

    def _reader(self, key: str, meta: dict, offset: int) -> RangeReader:
        fetch = lambda start, end: fetch_range(  # noqa: E731
            self.client, f"downloading {key}", meta["id"], start, end,
            on_404=lambda e: NotFound(f"{self.url}: no object {key} (deleted)"))
        return RangeReader(fetch, int(meta.get("size", 0)), offset, self.chunk_bytes, f"{self.subject}: {key}")

    def _write(self, key: str, source: BinaryIO, digest: Digest) -> Stat:
        folder, _, name = key.rpartition("/")
        existing = self._candidates(key)
        self._reserve(key, digest.size, int(existing[0].get("size", 0)) if existing else 0)
        target = existing[0]["id"] if existing else None
        try:
            meta = self._upload(key, name, folder, source, digest, target)
        except NotFound:
            if target is None:
                raise
            meta = self._upload(key, name, folder, source, digest, None)  # deleted meanwhile: create
        except QuotaExceeded as e:
            if not hasattr(e, "drive_reason"):
                raise
            raise QuotaExceeded(f"{self.subject}: no room for {key} ({digest.size:,} bytes): "
                                f"{quota_words(e.drive_reason)}") from e
        if meta.get("md5Checksum") not in (None, digest.md5):
            if target is None:
                self._delete_quietly(meta["id"])
            raise IntegrityError(f"{self.url}: {key} was stored with md5 {meta.get('md5Checksum')}, "
                                 f"but {digest.md5} was sent")
        with self._lock:
            self._file_ids[key] = meta["id"]
        self._count_write(digest.size - (int(existing[0].get("size", 0)) if existing else 0))
        for loser in existing[1:]:
            self._delete_quietly(loser["id"])  # tidy duplicates: the winner now has the new content
        return self._stat_of(key, meta, digest)

    def _upload(self, key: str, name: str, folder: str, source: BinaryIO, digest: Digest,
                file_id: str | None) -> dict:
        """Uploads the content as a new file (file_id None) or a new revision; returns its metadata."""
        parent = None if file_id else self._folder_ids(folder, create=True)[0]
        # A small create is one request that the client retries: with an id of our own, a retry
        # whose first attempt succeeded is a 409, not a duplicate file. (A resumable upload is
        # already idempotent: its session URL, not a new request, is what a retry resumes.)
        new_id = self._reserved_id() if file_id is None and digest.size <= self.chunk_bytes else None

        def request(media):
            if file_id:
                return self.client.files.update(fileId=file_id, media_body=media, fields=FILE_FIELDS,
                                                supportsAllDrives=True)
            body = {"name": name, "parents": [parent], "mimeType": OBJECT_MIME}
            if new_id:
                body["id"] = new_id
            return self.client.files.create(body=body, media_body=media, fields=FILE_FIELDS, supportsAllDrives=True)

        try:
            return send_media(self.client, f"upload of {key}", request, source, digest.size, self.chunk_bytes)
        except Conflict:
            if new_id is None:
                raise
            meta = self._get_by_id(new_id)  # created by the attempt whose answer was lost
            if meta is None or meta.get("md5Checksum") not in (None, digest.md5) or meta.get("name") != name:
                raise StoreError(f"{self.subject}: upload of {key}: Drive says file {new_id} exists, "
                                 "but it is not the file sent") from None
            return meta

    def _reserved_id(self) -> str:
        """Returns an unused file id from files.generateIds (asked for in batches)."""
        with self._lock:
            if self._spare_ids:
                return self._spare_ids.pop()
        ids = self.client.execute("reserving file ids", lambda: self.client.files.generateIds(
            count=ID_BATCH, space="drive", type="files")).get("ids", [])
        if not ids:
            raise StoreError(f"{self.subject}: Drive reserved no file ids")
        with self._lock:
            self._spare_ids.extend(ids[1:])
        return ids[0]

    def _delete(self, key: str) -> None:
        found = self._candidates(key)
        if not found:
            raise NotFound(f"{self.url}: no object {key}")
        for meta in found:
            self._delete_file(meta["id"], key)
        with self._lock:
            self._file_ids.pop(key, None)
        self._count_write(-sum(int(m.get("size", 0)) for m in found))

    def _delete_file(self, file_id: str, key: str) -> None:
        try:
            self.client.execute(f"deleting {key}",
                                lambda: self.client.files.delete(fileId=file_id, supportsAllDrives=True))
        except NotFound:
            pass  # deleted by someone else meanwhile: the outcome we wanted

    def _delete_quietly(self, file_id: str) -> None:
        try:
            self._delete_file(file_id, file_id)
        except StoreError:
            pass  # tidying only; the duplicate rule keeps readers right regardless

    # -- the account --------------------------------------------------------------------------

    def _about(self) -> dict:
        return self.client.execute("reading the account's quota", lambda: self.client.service.about().get(
            fields="user(emailAddress,displayName),storageQuota(limit,usage,usageInDrive)"))

    def usage(self) -> Usage:
        about = self._about()
        with self._lock:
            self._identity = about.get("user", {}).get("emailAddress") or self._identity
        quota = about.get("storageQuota", {})
        used = int(quota.get("usage", 0))
        limit = int(quota["limit"]) if quota.get("limit") else None  # absent: unlimited (Workspace, Shared Drives)
        if self.quota_bytes is not None:
            limit = self.quota_bytes if limit is None else min(limit, self.quota_bytes)
        with self._lock:
            self._used = used
            self._writes_since_count = 0
        return Usage(used, limit)

    def identity(self) -> str | None:
        """Returns the account's email address, as Drive knows it (about.get)."""
        with self._lock:
            if self._identity:
                return self._identity
        about = self._about()
        with self._lock:
            self._identity = about.get("user", {}).get("emailAddress")
            return self._identity

    def _reserve(self, key: str, size: int, replaced: int) -> None:
        """Raises QuotaExceeded if the write would take the account past `quota_bytes` (the cap
        set in the job file; Drive enforces its own limit itself). Usage is asked of Drive only
        near the cap, or every 100 writes, since other writers share the account."""
        if self.quota_bytes is None:
            return
        with self._lock:
            used = self._used
            stale = used is None or self._writes_since_count >= 100 or \
                used - replaced + size > self.quota_bytes * RECOUNT_MARGIN
        if stale:
            used = self.usage().used_bytes
        if used - replaced + size > self.quota_bytes:
            raise QuotaExceeded(f"{self.subject}: no room for {key} ({size:,} bytes): "
                                f"{used:,} of {self.quota_bytes:,} bytes used")

    def _count_write(self, delta: int) -> None:
        with self._lock:
            if self._used is not None:
                self._used += delta
                self._writes_since_count += 1

"""The Drive itself: accounts, files, permissions and quota, kept in memory behind one lock.

Nothing here knows about HTTP. Failures are `DriveError`s carrying the status, domain, reason and
message that Drive v3 puts in its error bodies, so the HTTP layer only serialises them.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

FOLDER_MIME = "application/vnd.google-apps.folder"
GOOGLE_APPS_PREFIX = "application/vnd.google-apps."
ROLE_RANK = {"reader": 1, "commenter": 2, "writer": 3, "fileOrganizer": 3, "organizer": 4, "owner": 5}


class DriveError(Exception):
    """A Drive API failure: HTTP status plus the first entry of Drive's `errors` list."""

    def __init__(self, status: int, reason: str, message: str, domain: str = "global",
                 location: str | None = None, location_type: str | None = None, headers=None):
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message, self.domain = status, reason, message, domain
        self.location, self.location_type = location, location_type
        self.headers = dict(headers or {})

    def body(self) -> dict:
        entry = {"domain": self.domain, "reason": self.reason, "message": self.message}
        if self.location:
            entry.update(location=self.location, locationType=self.location_type or "parameter")
        return {"error": {"code": self.status, "message": self.message, "errors": [entry]}}


def not_found(file_id: str) -> DriveError:
    return DriveError(404, "notFound", f"File not found: {file_id}.", location="fileId")


def no_permission(file_id: str) -> DriveError:
    return DriveError(403, "insufficientFilePermissions",
                      f"The user does not have sufficient permissions for file {file_id}.")


def quota_exceeded() -> DriveError:
    return DriveError(403, "storageQuotaExceeded", "The user's Drive storage quota has been exceeded.",
                      domain="usageLimits")


def bad_request(message: str, location: str | None = None, reason: str = "badRequest") -> DriveError:
    return DriveError(400, reason, message, location=location)


def rfc3339(moment: datetime) -> str:
    """Drive's timestamp form: UTC, milliseconds, a literal Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    except (TypeError, ValueError):
        raise bad_request(f"Invalid value for time: {text!r}.") from None


def new_id(length: int = 33) -> str:
    """A random id shaped like Drive's (letters, digits, - and _)."""
    return "1" + secrets.token_urlsafe(length)[: length - 1]


@dataclass
class Account:
    email: str
    display_name: str
    quota_bytes: int | None
    root_id: str
    token: str | None = None
    refresh_token: str | None = None
    permission_id: str = field(default_factory=lambda: str(secrets.randbelow(10**20)).zfill(20))

    def user_resource(self, me: bool) -> dict:
        return {"kind": "drive#user", "displayName": self.display_name, "emailAddress": self.email,
                "permissionId": self.permission_id, "me": me}


@dataclass
class DriveFile:
    id: str
    name: str
    mime_type: str
    owner: str
    parents: list[str]
    created: datetime
    modified: datetime
    content: bytes | None = None
    trashed: bool = False
    description: str | None = None
    properties: dict = field(default_factory=dict)
    app_properties: dict = field(default_factory=dict)
    permissions: dict = field(default_factory=dict)      # email -> role, the owner not included
    version: int = 1
    listed_after: float = 0.0                            # monotonic time before which files.list hides it
    is_root: bool = False

    @property
    def is_folder(self) -> bool:
        return self.mime_type == FOLDER_MIME

    @property
    def size(self) -> int:
        return len(self.content) if self.content is not None else 0


class Drive:
    """Every account's My Drive in one in-memory graph; all public methods take the lock."""

    def __init__(self):
        self.lock = threading.RLock()
        self.accounts: dict[str, Account] = {}
        self.files: dict[str, DriveFile] = {}
        self.generated_ids: set[str] = set()    # from files.generateIds, usable once by files.create
        self.listing_lag = 0.0          # seconds a new or rewritten file stays out of files.list
        self.clock_offset = 0.0         # seconds added to the server's clock (a skewed server)

    def set_listing_lag(self, seconds: float) -> None:
        """Sets the listing lag; files already written are listed no later than `seconds` from now,
        so a lag of 0 lists everything at once (a test can compare readers deterministically)."""
        with self.lock:
            self.listing_lag = seconds
            latest = time.monotonic() + seconds
            for drive_file in self.files.values():
                drive_file.listed_after = min(drive_file.listed_after, latest)

    # -- time ---------------------------------------------------------------------------------
    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.clock_offset)

    # -- accounts -----------------------------------------------------------------------------
    def add_account(self, email: str, display_name: str | None, quota_bytes: int | None) -> Account:
        with self.lock:
            if email in self.accounts:
                raise ValueError(f"account {email} already exists")
            root = self._new_file("My Drive", FOLDER_MIME, email, [], is_root=True)
            account = Account(email, display_name or email.split("@")[0].title(), quota_bytes, root.id)
            self.accounts[email] = account
            return account

    def usage(self, email: str) -> int:
        """Bytes counted against `email`: every file it owns, trashed ones included (as Drive does)."""
        with self.lock:
            return sum(f.size for f in self.files.values() if f.owner == email)

    def trash_usage(self, email: str) -> int:
        with self.lock:
            return sum(f.size for f in self.files.values() if f.owner == email and f.trashed)

    def _check_quota(self, owner: str, growth: int) -> None:
        limit = self.accounts[owner].quota_bytes
        if growth > 0 and limit is not None and self.usage(owner) + growth > limit:
            raise quota_exceeded()

    # -- access -------------------------------------------------------------------------------
    def resolve_id(self, email: str, file_id: str) -> str:
        if file_id == "root":
            return self.accounts[email].root_id
        return file_id

    def role(self, email: str, drive_file: DriveFile, _seen=None) -> str | None:
        """The strongest role `email` holds on the file, directly or through a parent folder."""
        if drive_file.owner == email:
            return "owner"
        best = drive_file.permissions.get(email)
        seen = _seen or set()
        seen.add(drive_file.id)
        for parent_id in drive_file.parents:
            parent = self.files.get(parent_id)
            if parent is None or parent_id in seen:
                continue
            inherited = self.role(email, parent, seen)
            if inherited and (best is None or ROLE_RANK[inherited] > ROLE_RANK[best]):
                best = "writer" if inherited == "owner" else inherited
        return best

    def lookup(self, email: str, file_id: str, need: str = "reader") -> DriveFile:
        """The file, if `email` may see it (404 otherwise) and holds at least role `need` (403)."""
        with self.lock:
            drive_file = self.files.get(self.resolve_id(email, file_id))
            role = self.role(email, drive_file) if drive_file else None
            if role is None:
                raise not_found(file_id)
            if ROLE_RANK[role] < ROLE_RANK[need]:
                raise no_permission(file_id)
            return drive_file

    def visible(self, email: str) -> list[DriveFile]:
        with self.lock:
            return [f for f in self.files.values() if not f.is_root and self.role(email, f)]

    # -- writes -------------------------------------------------------------------------------
    def _new_file(self, name, mime_type, owner, parents, content=None, is_root=False, **extra) -> DriveFile:
        moment = self.now()
        drive_file = DriveFile(new_id(), name, mime_type, owner, list(parents), moment, moment,
                               content=content, is_root=is_root,
                               listed_after=time.monotonic() + self.listing_lag, **extra)
        while drive_file.id in self.files:
            drive_file.id = new_id()
        self.files[drive_file.id] = drive_file
        return drive_file

    def _writable_parents(self, email: str, parent_ids) -> list[str]:
        parents = []
        for parent_id in parent_ids:
            parent = self.lookup(email, parent_id, need="writer")
            if not parent.is_folder:
                raise bad_request(f"The specified parent is not a folder: {parent_id}.", location="parents")
            parents.append(parent.id)
        if len(parents) > 1:
            raise DriveError(403, "cannotAddParent", "Increasing the number of parents is not allowed.")
        return parents

    def create(self, email: str, metadata: dict, content: bytes | None, media_mime: str | None) -> DriveFile:
        """files.create: metadata and, for uploads, the content; quota charged to the creator."""
        with self.lock:
            check_writable_metadata(metadata, creating=True)
            parents = self._writable_parents(email, metadata.get("parents") or ["root"])
            mime_type = metadata.get("mimeType") or media_mime or "application/octet-stream"
            if content is not None and mime_type.startswith(GOOGLE_APPS_PREFIX):
                raise bad_request("Conversion to Google Apps types is not supported by this emulator.")
            if content is None and not mime_type.startswith(GOOGLE_APPS_PREFIX):
                content = b""
            self._check_quota(email, len(content or b""))
            wanted = metadata.get("id")
            if wanted is not None:
                # Ids from files.generateIds make creates safe to retry: the second one is a 409.
                if wanted in self.files:
                    raise DriveError(409, "duplicate", "A file already exists with the provided ID.")
                if wanted not in self.generated_ids:
                    raise bad_request("The provided file ID is not usable.", location="file.id",
                                      reason="fileIdNotUsable")
            drive_file = self._new_file(metadata.get("name") or "Untitled", mime_type, email, parents, content,
                                        description=metadata.get("description"),
                                        properties=dict(metadata.get("properties") or {}),
                                        app_properties=dict(metadata.get("appProperties") or {}))
            if wanted is not None:
                del self.files[drive_file.id]
                drive_file.id = wanted
                self.files[wanted] = drive_file
            if metadata.get("modifiedTime"):
                drive_file.modified = parse_rfc3339(metadata["modifiedTime"])
            return drive_file

    def update(self, email: str, file_id: str, metadata: dict, content: bytes | None = None,
               add_parents: str = "", remove_parents: str = "") -> DriveFile:
        """files.update: metadata patch, parent moves and (for uploads) new content, all or nothing."""
        with self.lock:
            drive_file = self.lookup(email, file_id, need="writer")
            check_writable_metadata(metadata, creating=False)
            if "trashed" in metadata and drive_file.owner != email:
                raise no_permission(file_id)
            if content is not None:
                if drive_file.is_folder or drive_file.mime_type.startswith(GOOGLE_APPS_PREFIX):
                    raise bad_request("Only files with binary content can be updated with media.")
                self._check_quota(drive_file.owner, len(content) - drive_file.size)
            parents = [p for p in drive_file.parents if p not in _split(remove_parents)]
            added = [self.lookup(email, p, need="writer").id for p in _split(add_parents)]
            parents += [p for p in added if p not in parents]
            if len(parents) > max(1, len(drive_file.parents)):
                raise DriveError(403, "cannotAddParent", "Increasing the number of parents is not allowed.")
            drive_file.parents = parents
            for key, attribute in (("name", "name"), ("mimeType", "mime_type"), ("description", "description"),
                                   ("trashed", "trashed")):
                if key in metadata:
                    setattr(drive_file, attribute, metadata[key])
            for key, attribute in (("properties", "properties"), ("appProperties", "app_properties")):
                for prop, value in (metadata.get(key) or {}).items():
                    values = getattr(drive_file, attribute)
                    values.pop(prop, None) if value is None else values.__setitem__(prop, value)
            if content is not None:
                drive_file.content = content
                drive_file.version += 1
                drive_file.listed_after = max(drive_file.listed_after, time.monotonic() + self.listing_lag)
            drive_file.modified = (parse_rfc3339(metadata["modifiedTime"]) if metadata.get("modifiedTime")
                                   else self.now())
            drive_file.version += 1
            return drive_file

    def delete(self, email: str, file_id: str) -> None:
        """files.delete: owners only; a folder takes the caller's descendants with it."""
        with self.lock:
            drive_file = self.lookup(email, file_id)
            if drive_file.owner != email or drive_file.is_root:
                raise no_permission(file_id)
            doomed = {drive_file.id}
            changed = True
            while changed:
                changed = False
                for other in self.files.values():
                    if other.id not in doomed and other.owner == email and set(other.parents) & doomed:
                        doomed.add(other.id)
                        changed = True
            for other in self.files.values():
                other.parents = [p for p in other.parents if p not in doomed]
            for gone in doomed:
                del self.files[gone]

    def share(self, email: str, file_id: str, target: str, role: str) -> None:
        with self.lock:
            drive_file = self.lookup(email, file_id, need="writer")
            if role not in ("reader", "commenter", "writer"):
                raise bad_request(f"Invalid role: {role}.", location="permission.role", reason="invalid")
            if target != drive_file.owner:
                drive_file.permissions[target] = role

    def unshare(self, email: str, file_id: str, permission_id: str) -> None:
        with self.lock:
            drive_file = self.lookup(email, file_id, need="writer")
            for target in list(drive_file.permissions):
                account = self.accounts.get(target)
                if permission_id in (target, account.permission_id if account else None):
                    del drive_file.permissions[target]
                    return
            raise DriveError(404, "notFound", f"Permission not found: {permission_id}.", location="permissionId")

    def generate_ids(self, count: int) -> list[str]:
        with self.lock:
            ids = [new_id() for _ in range(count)]
            self.generated_ids.update(ids)
            return ids

    def tamper(self, file_id: str, content: bytes) -> None:
        """Replaces content behind every client's back, the way another writer would."""
        with self.lock:
            drive_file = self.files[file_id]
            drive_file.content = bytes(content)
            drive_file.modified = self.now()
            drive_file.version += 1

    # -- rendering ----------------------------------------------------------------------------
    def resource(self, drive_file: DriveFile, viewer: str) -> dict:
        """The full files resource as `viewer` sees it; the HTTP layer trims it to `fields`."""
        with self.lock:
            owner = self.accounts.get(drive_file.owner)
            owners = [owner.user_resource(me=owner.email == viewer)] if owner else []
            role = self.role(viewer, drive_file) or "reader"
            resource = {
                "kind": "drive#file", "id": drive_file.id, "name": drive_file.name,
                "mimeType": drive_file.mime_type, "parents": list(drive_file.parents),
                "trashed": drive_file.trashed, "explicitlyTrashed": drive_file.trashed,
                "createdTime": rfc3339(drive_file.created), "modifiedTime": rfc3339(drive_file.modified),
                "version": str(drive_file.version), "owners": owners, "ownedByMe": drive_file.owner == viewer,
                "shared": bool(drive_file.permissions), "starred": False, "spaces": ["drive"],
                "quotaBytesUsed": str(drive_file.size),
                "capabilities": {"canEdit": ROLE_RANK[role] >= ROLE_RANK["writer"],
                                 "canDelete": drive_file.owner == viewer,
                                 "canTrash": drive_file.owner == viewer,
                                 "canDownload": True, "canShare": ROLE_RANK[role] >= ROLE_RANK["writer"],
                                 "canAddChildren": drive_file.is_folder and ROLE_RANK[role] >= ROLE_RANK["writer"]},
            }
            if drive_file.is_root:
                resource.pop("parents")
            if drive_file.content is not None:
                content = drive_file.content
                resource.update(size=str(len(content)), md5Checksum=hashlib.md5(content).hexdigest(),
                                sha1Checksum=hashlib.sha1(content).hexdigest(),
                                sha256Checksum=hashlib.sha256(content).hexdigest(),
                                headRevisionId=f"rev{drive_file.version}")
            if drive_file.description is not None:
                resource["description"] = drive_file.description
            if drive_file.properties:
                resource["properties"] = dict(drive_file.properties)
            if drive_file.app_properties:
                resource["appProperties"] = dict(drive_file.app_properties)
            return resource


WRITABLE_FIELDS = {"name", "mimeType", "description", "trashed", "properties", "appProperties",
                   "modifiedTime", "starred", "originalFilename", "contentHints", "writersCanShare",
                   "viewedByMeTime", "folderColorRgb", "copyRequiresWriterPermission", "kind"}


def check_writable_metadata(metadata: dict, creating: bool) -> None:
    allowed = WRITABLE_FIELDS | ({"parents", "id", "createdTime"} if creating else set())
    for key in metadata:
        if key not in allowed:
            if key == "parents":
                raise DriveError(403, "fieldNotWritable", "The parents field is not directly writable in update "
                                 "requests. Use the addParents and removeParents parameters instead.")
            raise DriveError(403, "fieldNotWritable", "The resource body includes fields which are not "
                             "directly writable.", location=key, location_type="other")


def _split(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]

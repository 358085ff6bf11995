"""One account as a store sees it: where its store is, its quota, and how it signs in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Account:
    """A named store of a job: its URL, its quota and its backend's typed sign-in settings.

    `settings` is the object the URL's backend builds from the job file (the Drive backend's
    `DriveSettings`); None means the backend's defaults, with credentials from the environment
    (docs/storage.md). `fallback` is signed in as instead where this machine holds no credentials
    of this account's own: a worker reads and writes every account's folder as the person running
    it.
    """

    name: str | None  # the account's name in the job; None: the home store of a job URL
    url: str
    quota_bytes: int | None = None  # enforced where the backend has no quota of its own
    job: str | None = None
    base_dir: Path | None = None  # relative paths in the URL and settings are relative to it
    settings: Any = None
    fallback: "Account | None" = None

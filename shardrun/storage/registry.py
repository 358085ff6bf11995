"""Stores by URL scheme: `local:///path`, `memory://name`, `drive://<folder-id>`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote

from shardrun.errors import StoreError
from shardrun.storage.base import Store

SCHEMES = ("local", "memory", "drive")

def split_url(url: str) -> tuple[str, str]:
    """Returns (scheme, rest) of a store URL, or raises StoreError naming the URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise StoreError(f"store URL {url!r} has no scheme; expected one of: "
                         + ", ".join(f"{s}://..." for s in SCHEMES))
    if scheme not in SCHEMES:
        raise StoreError(f"store URL {url!r} has unknown scheme {scheme!r}; expected one of: "
                         + ", ".join(SCHEMES))
    if not rest:
        raise StoreError(f"store URL {url!r} names no location after '{scheme}://'")
    return scheme, rest


def local_root(rest: str, base_dir: Path | None) -> Path:
    """Returns the folder a `local://` URL names; relative ones are relative to `base_dir`."""
    path = Path(unquote(rest)).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path


def absolute_url(url: str, base_dir: Path | None) -> str:
    """Returns the URL with a relative local path made absolute, for records read elsewhere."""
    scheme, rest = split_url(url)
    return f"local://{local_root(rest, base_dir)}" if scheme == "local" else url


def open_store(url: str, quota_bytes: int | None = None, base_dir: Path | None = None,
               account: Mapping[str, Any] | None = None) -> Store:
    """Returns the store a URL names, enforcing `quota_bytes` where the backend has no own quota.

    `account` describes who opens it, for backends that sign in (Drive): the account's `name`,
    the `job`, and its job-file settings (`auth`, `token`, `credentials`, `client_secrets`,
    `root_url`, `chunk_mib`, `retries`, `retry_seconds`); without it credentials come from the
    environment (see docs/storage.md).
    """
    scheme, rest = split_url(url)
    if scheme == "drive":
        from shardrun.storage.drive.store import open_drive_store

        return open_drive_store(url, rest, quota_bytes, account)
    if scheme == "local":
        from shardrun.storage.local import LocalStore

        return LocalStore(local_root(rest, base_dir), quota_bytes, url=url)
    from shardrun.storage.memory import MemoryStore

    return MemoryStore.named(rest, quota_bytes)

"""Stores by URL scheme: `local:///path`, `memory://name`, `drive://<folder-id>`, `s3://bucket/prefix`,
`gs://bucket/prefix`, `fsspec://PROTO/PATH`.

Like fsspec's registry, a table maps each scheme to the backend that owns it, named
`"module:object"`, with an install hint for a backend that needs packages of its own. The
module is imported on first use, so opening a local store never loads the Drive client. Callers
never test for a scheme: they ask the registry, which asks the URL's backend. A new backend
is one row here plus one module (the fsspec one serves three schemes).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from shardrun.errors import StoreError
from shardrun.storage.account import Account
from shardrun.storage.backend import Backend
from shardrun.storage.base import Store
from shardrun.storage.fsspec_store.settings import FSSPEC_HINT, GCS_HINT, S3_HINT  # standard library only

DRIVE_HINT = "install the Google client libraries: pip install google-api-python-client google-auth-oauthlib"


@dataclass(frozen=True)
class _Row:
    target: str | Backend  # "module:object", imported on first use, or the backend itself
    install_hint: str | None = None  # the command that installs what the backend needs


_TABLE: dict[str, _Row] = {
    "local": _Row("shardrun.storage.local:BACKEND"),
    "memory": _Row("shardrun.storage.memory:BACKEND"),
    "drive": _Row("shardrun.storage.drive.backend:BACKEND", DRIVE_HINT),
    "s3": _Row("shardrun.storage.fsspec_store.backend:S3_BACKEND", S3_HINT),
    "gs": _Row("shardrun.storage.fsspec_store.backend:GS_BACKEND", GCS_HINT),
    "fsspec": _Row("shardrun.storage.fsspec_store.backend:FSSPEC_BACKEND", FSSPEC_HINT),
}
_LOADED: dict[str, Backend] = {}
_LOCK = threading.Lock()


def register(scheme: str, target: str | Backend, install_hint: str | None = None, *, clobber: bool = False) -> None:
    """Registers the backend of `scheme://` URLs: a `"module:object"` imported on first use, or
    a Backend; `install_hint` says what to install when its module cannot be imported."""
    with _LOCK:
        if scheme in _TABLE and not clobber:
            raise ValueError(f"scheme {scheme!r} is registered already; pass clobber=True to replace it")
        _TABLE[scheme] = _Row(target, install_hint)
        _LOADED.pop(scheme, None)


def unregister(scheme: str) -> None:
    """Removes the backend of `scheme://` URLs from the registry."""
    with _LOCK:
        _TABLE.pop(scheme, None)
        _LOADED.pop(scheme, None)


def schemes() -> tuple[str, ...]:
    """Returns the registered schemes, in the table's order (nothing is imported)."""
    return tuple(_TABLE)


def split_url(url: str) -> tuple[str, str]:
    """Returns (scheme, rest) of a store URL, or raises StoreError naming the URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise StoreError(f"store URL {url!r} has no scheme; expected one of: "
                         + ", ".join(f"{s}://..." for s in _TABLE))
    if scheme not in _TABLE:
        raise StoreError(f"store URL {url!r} has unknown scheme {scheme!r}; expected one of: " + ", ".join(_TABLE))
    if not rest:
        raise StoreError(f"store URL {url!r} names no location after '{scheme}://'")
    return scheme, rest


@contextlib.contextmanager
def _needing_packages(scheme: str) -> Iterator[None]:
    """Turns an ImportError (a package the backend needs is missing) into its install hint."""
    try:
        yield
    except ImportError as e:
        row = _TABLE.get(scheme)
        hint = f"; {row.install_hint}" if row and row.install_hint else ""
        raise StoreError(f"{scheme}:// stores need a package that is not installed ({e}){hint}") from e


def backend(scheme: str) -> Backend:
    """Returns the backend registered for `scheme`, importing its module on first use."""
    loaded = _LOADED.get(scheme)
    if loaded is not None:
        return loaded
    row = _TABLE.get(scheme)
    if row is None:
        raise StoreError(f"unknown store scheme {scheme!r}; expected one of: " + ", ".join(_TABLE))
    target = row.target
    if isinstance(target, str):
        module_name, _, attribute = target.partition(":")
        with _needing_packages(scheme):
            target = getattr(importlib.import_module(module_name), attribute)
    with _LOCK:
        return _LOADED.setdefault(scheme, target)


def backend_for(url: str) -> Backend:
    """Returns the backend that owns the URL's scheme, or raises StoreError naming the URL."""
    return backend(split_url(url)[0])


def backends() -> dict[str, Backend]:
    """Returns every registered backend by scheme (importing their light modules)."""
    return {scheme: backend(scheme) for scheme in schemes()}


def open_store(account: Account) -> Store:
    """Returns the account's store, enforcing its `quota_bytes` where the backend has no own quota."""
    scheme = split_url(account.url)[0]
    found = backend(scheme)
    with _needing_packages(scheme):
        return found.open(account)


def absolute_url(url: str, base_dir: Path | None) -> str:
    """Returns the URL with a relative path made absolute, for records read elsewhere."""
    return backend_for(url).absolute_url(url, base_dir)


def describe_sign_in(account: Account) -> str:
    """Returns how the account signs in, for people (no secret in it)."""
    scheme = split_url(account.url)[0]
    found = backend(scheme)
    with _needing_packages(scheme):
        return found.describe(account)


def sign_in_method(account: Account) -> str | None:
    """Returns how the account signs in (`oauth`, ...), or None where its store needs no sign-in."""
    scheme = split_url(account.url)[0]
    found = backend(scheme)
    with _needing_packages(scheme):
        return found.sign_in_method(account)


def login(account: Account, prompt: Callable[[str], None], open_browser: bool = True) -> Path:
    """Returns the credentials file written by signing the account in interactively."""
    scheme = split_url(account.url)[0]
    found = backend(scheme)
    with _needing_packages(scheme):
        return found.login(account, prompt, open_browser)

"""What a store backend owns: its URL scheme, its job-file keys, and how its accounts open,
check and sign in.

A backend module exposes one `Backend` instance, named in the registry's table
(shardrun/storage/registry.py). The module must stay light: it is imported to validate a job
file, so anything heavy (an API client) is imported inside `open`, `describe` or `login`.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from shardrun.errors import StoreError
from shardrun.storage.account import Account
from shardrun.storage.base import Store
from shardrun.validate import Key

NO_KEYS: Mapping[str, Key] = MappingProxyType({})


class Backend:
    """One store backend; subclasses supply `scheme`, `open` and `describe`, and their keys."""

    scheme: str = ""
    # [[accounts]] keys this backend reads: how an account signs in. Given for a store of another
    # scheme, they are refused.
    account_keys: Mapping[str, Key] = NO_KEYS
    # [job] keys that apply to every account of this backend (named `<scheme>_...`).
    job_keys: Mapping[str, Key] = NO_KEYS

    def location(self, url: str) -> str:
        """Returns what the URL names after `scheme://` (the registry has checked it is not empty)."""
        return url.partition("://")[2]

    def settings(self, account: Mapping[str, Any], job: Mapping[str, Any], base_dir: Path) -> Any:
        """Returns the backend's typed settings from an account's and the job's checked keys
        (relative paths made absolute against `base_dir`); None where it has none."""
        return None

    def check(self, account: Account) -> list[str]:
        """Returns problems with the account's settings that need no network (key types and
        allowed values are checked by the validator already)."""
        return []

    def absolute_url(self, url: str, base_dir: Path | None) -> str:
        """Returns the URL made independent of `base_dir`, for records read on other machines."""
        return url

    def open(self, account: Account) -> Store:
        """Returns the account's store; it signs in on first use, so opening never blocks."""
        raise NotImplementedError

    def describe(self, account: Account) -> str:
        """Returns how the account signs in, for people (never with a secret in it)."""
        raise NotImplementedError

    def sign_in_method(self, account: Account) -> str | None:
        """Returns how the account signs in (`oauth`, ...), or None where it needs no sign-in."""
        return None

    def login(self, account: Account, prompt: Callable[[str], None], open_browser: bool = True) -> Path:
        """Returns the credentials file written by signing the account in interactively."""
        raise StoreError(f"{account.url}: {self.scheme}:// stores need no sign-in")

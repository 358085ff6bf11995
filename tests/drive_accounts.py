"""Pytest plugin: DriveStores on the Drive emulator, one fresh account and folder each.

    make_drive_store(quota_bytes=None, **store_options) -> DriveStore
    new_drive_account(emu, quota_bytes=None) -> DriveAccountOnEmulator (email, token, refresh, folder)

Stores retry fast (FAST_RETRY) so fault tests take milliseconds, not Drive's real backoff.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from google.oauth2.credentials import Credentials

from shardrun.storage.drive.store import DriveStore
from shardrun.storage.drive.api import RetryPolicy

FAST_RETRY = RetryPolicy(attempts=5, total_seconds=10.0, first_wait_seconds=0.002, max_wait_seconds=0.01)
SMALL_CHUNK = 256 * 1024
_numbers = itertools.count()


@dataclass(frozen=True)
class DriveAccountOnEmulator:
    name: str
    email: str
    token: str
    refresh_token: str
    folder: str


def new_drive_account(emu, quota_bytes: int | None = None, name: str | None = None) -> DriveAccountOnEmulator:
    """Adds an account with its own `shardrun` folder to the emulator; returns its particulars."""
    n = next(_numbers)
    name = name or f"acct{n}"
    email = f"{name}@example.com"
    token, refresh = f"tok-{name}-{n}", f"refresh-{name}-{n}"
    emu.add_account(email, token=token, quota_bytes=quota_bytes, refresh_token=refresh)
    return DriveAccountOnEmulator(name, email, token, refresh, emu.create_folder(email, "shardrun"))


def drive_store_for(emu, account: DriveAccountOnEmulator, credentials=None, **options) -> DriveStore:
    """Returns a DriveStore on the account's folder, signed in with its bearer token by default."""
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("account_name", account.name)
    return DriveStore(account.folder, credentials or Credentials(token=account.token), root_url=emu.root_url,
                      **options)


@pytest.fixture
def make_drive_store(drive_emulator):
    """A factory of DriveStores on fresh emulator accounts: make_drive_store(quota_bytes=None, **options)."""

    def make(quota_bytes: int | None = None, **options) -> DriveStore:
        return drive_store_for(drive_emulator, new_drive_account(drive_emulator, quota_bytes), **options)

    return make

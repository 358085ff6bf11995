"""A Drive account's typed settings from the job file, and where the environment may supply
them (an endpoint override, a bearer token). Standard library only: the backend's declaration
(read to validate a job file) and the sign-in code both import it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from shardrun.storage.account import Account

METHODS = ("colab", "oauth", "service-account", "token")
ROOT_URL_ENV = "SHARDRUN_DRIVE_ROOT_URL"
TOKEN_ENV_PREFIX = "SHARDRUN_DRIVE_TOKEN"  # SHARDRUN_DRIVE_TOKEN_<ACCOUNT>, or alone for any account
DEFAULT_CHUNK_MIB = 8
DEFAULT_RETRIES = 7
DEFAULT_RETRY_SECONDS = 300.0


@dataclass(frozen=True)
class DriveSettings:
    """A Drive account's job-file settings: how it signs in, and the job's `drive_*` keys.

    Never a secret in repr or messages: the token is kept out of repr.
    """

    auth: str | None = None  # one of METHODS; None: chosen from context (auth.choose_method)
    token: str | None = field(default=None, repr=False)
    credentials: Path | None = None  # token file (oauth) or service-account key
    client_secrets: Path | None = None  # the user's OAuth client id, for `accounts login`
    root_url: str | None = None  # endpoint override (an emulator); else $SHARDRUN_DRIVE_ROOT_URL
    chunk_mib: int = DEFAULT_CHUNK_MIB
    retries: int = DEFAULT_RETRIES
    retry_seconds: float = DEFAULT_RETRY_SECONDS


def settings_of(account: Account) -> DriveSettings:
    """Returns the account's Drive settings; the defaults where it has none (a job URL's home)."""
    return account.settings if isinstance(account.settings, DriveSettings) else DriveSettings()


def root_url_override(configured: str | None = None) -> str | None:
    """Returns the Drive endpoint override: the job file's `drive_root_url`, else the environment's."""
    return configured or os.environ.get(ROOT_URL_ENV) or None


def token_env_var(account: str | None) -> str:
    """Returns the environment variable that may hold `account`'s bearer token (emulators only)."""
    if not account:
        return TOKEN_ENV_PREFIX
    return f"{TOKEN_ENV_PREFIX}_{re.sub(r'[^A-Z0-9]', '_', account.upper())}"


def env_token(account: str | None) -> str | None:
    """Returns the bearer token the environment holds for `account`, if any."""
    return os.environ.get(token_env_var(account)) or os.environ.get(TOKEN_ENV_PREFIX) or None

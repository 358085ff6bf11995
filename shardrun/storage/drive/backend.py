"""The Drive backend: `drive://<folder-id>` URLs, the job-file keys of a Drive account (how it
signs in) and of the job (`drive_*`), their checks, and how its stores open and sign in.

Light on purpose: validating a job file imports it, so the Google client libraries are imported
only when a store is opened or an account signs in (store.py, api.py, auth.py).
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from shardrun.storage.account import Account
from shardrun.storage.backend import Backend
from shardrun.storage.base import Store
from shardrun.storage.drive.settings import (
    DEFAULT_CHUNK_MIB,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_SECONDS,
    METHODS,
    ROOT_URL_ENV,
    DriveSettings,
    env_token,
    root_url_override,
    settings_of,
    token_env_var,
)
from shardrun.validate import Key, non_negative, one_of, positive


def _http_url(value: str) -> str | None:
    return None if value.startswith(("http://", "https://")) else "an http(s):// URL"


class DriveBackend(Backend):
    """`drive://<folder-id>`: a folder on an account's Google Drive (docs/storage.md)."""

    scheme = "drive"
    account_keys = MappingProxyType({
        "auth": Key(str, check=one_of(*METHODS)),
        "token": Key(str),
        "credentials": Key(str),
        "client_secrets": Key(str),
    })
    job_keys = MappingProxyType({
        "drive_root_url": Key(str, check=_http_url),
        "drive_chunk_mib": Key(int, default=DEFAULT_CHUNK_MIB, check=positive),
        "drive_retries": Key(int, default=DEFAULT_RETRIES, check=non_negative),
        "drive_retry_seconds": Key((int, float), default=DEFAULT_RETRY_SECONDS, check=positive),
    })

    def folder_id(self, url: str) -> str:
        """Returns the folder id a `drive://<folder-id>` URL names."""
        return self.location(url).rstrip("/")

    def settings(self, account: Mapping[str, Any], job: Mapping[str, Any], base_dir: Path) -> DriveSettings:
        def absolute(path: str | None) -> Path | None:
            return None if path is None else base_dir / Path(path).expanduser()

        return DriveSettings(
            auth=account.get("auth"), token=account.get("token"), credentials=absolute(account.get("credentials")),
            client_secrets=absolute(account.get("client_secrets")), root_url=job.get("drive_root_url"),
            chunk_mib=job.get("drive_chunk_mib", DEFAULT_CHUNK_MIB),
            retries=job.get("drive_retries", DEFAULT_RETRIES),
            retry_seconds=float(job.get("drive_retry_seconds", DEFAULT_RETRY_SECONDS)))

    def check(self, account: Account) -> list[str]:
        # The token itself is never shown: a problem names the key, not its value.
        settings = settings_of(account)
        problems = []
        if settings.token and not root_url_override(settings.root_url):
            problems.append(f"token: a fixed bearer token is only allowed with drive_root_url (or ${ROOT_URL_ENV}) "
                            "pointing at an emulator; real Drive accounts sign in with auth = \"oauth\" or \"colab\"")
        if settings.auth == "token" and not settings.token and not env_token(account.name):
            problems.append(f"auth = \"token\": needs token = \"...\" or ${token_env_var(account.name)}")
        if settings.auth == "service-account" and not settings.credentials:
            problems.append("auth = \"service-account\": needs credentials = \"path/to/key.json\"")
        return problems

    def open(self, account: Account) -> Store:
        from shardrun.storage.drive.api import RetryPolicy
        from shardrun.storage.drive.auth import DriveAccount, load_credentials
        from shardrun.storage.drive.store import MIB, DriveStore

        settings = settings_of(account)
        sign_in = DriveAccount.of(account)
        retry = RetryPolicy(attempts=settings.retries + 1, total_seconds=float(settings.retry_seconds))
        # Credentials are loaded on first use, so opening never blocks or fails early.
        return DriveStore(self.folder_id(account.url), lambda: load_credentials(sign_in),
                          root_url=sign_in.effective_root_url, quota_bytes=account.quota_bytes, url=account.url,
                          account_name=account.name, chunk_bytes=settings.chunk_mib * MIB, retry=retry)

    def describe(self, account: Account) -> str:
        from shardrun.storage.drive.auth import DriveAccount, describe

        return describe(DriveAccount.of(account))

    def sign_in_method(self, account: Account) -> str | None:
        from shardrun.storage.drive.auth import DriveAccount, choose_method

        return choose_method(DriveAccount.of(account))

    def login(self, account: Account, prompt: Callable[[str], None], open_browser: bool = True) -> Path:
        from shardrun.storage.drive.auth import DriveAccount, login

        return login(DriveAccount.of(account), prompt, open_browser=open_browser)


BACKEND = DriveBackend()

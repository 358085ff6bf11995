"""The fsspec backend's declaration: its URLs (`s3://bucket/prefix`, `gs://bucket/prefix`,
`fsspec://PROTO/PATH`), its job-file keys, their checks, and how its stores open and sign in.

Light on purpose: validating a job file imports it, so fsspec and its filesystems (s3fs, gcsfs)
are imported only when a store is opened (store.py), or, where installed, to check a protocol.

One backend class serves three schemes. `s3://` and `gs://` are the plain URLs people already
write; every other fsspec protocol goes through `fsspec://PROTO/PATH`, because plain `memory://`,
`local://` or `file://` would clash with, or be mistaken for, shardrun's own stores.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from shardrun.errors import StoreError
from shardrun.storage.account import Account
from shardrun.storage.backend import Backend
from shardrun.storage.base import Store
from shardrun.storage.fsspec_store.settings import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_SECONDS,
    LOCAL_PROTOCOLS,
    OBJECT_STORES,
    FsspecSettings,
    Target,
    settings_of,
)
from shardrun.validate import Key, non_negative, positive

def _http_url(value: str) -> str | None:
    return None if value.startswith(("http://", "https://")) else "an http(s):// URL"


def known_protocols() -> set[str] | None:
    """Returns the protocols installed fsspec knows, or None where fsspec is not installed."""
    try:
        from fsspec.registry import known_implementations, registry
    except ImportError:
        return None
    return set(known_implementations) | set(registry)


class FsspecBackend(Backend):
    """`s3://bucket/prefix`, `gs://bucket/prefix`, `fsspec://PROTO/PATH` (docs/storage.md)."""

    account_keys = MappingProxyType({
        "endpoint_url": Key(str, check=_http_url),
        "profile": Key(str),
        "anon": Key(bool),
        "storage_options": Key(dict),
    })
    job_keys = MappingProxyType({
        "fsspec_retries": Key(int, default=DEFAULT_RETRIES, check=non_negative),
        "fsspec_retry_seconds": Key((int, float), default=DEFAULT_RETRY_SECONDS, check=positive),
    })

    def __init__(self, scheme: str, protocol: str | None):
        self.scheme = scheme
        self._protocol = protocol  # None: named in the URL (fsspec://PROTO/PATH)

    def target(self, url: str) -> Target:
        """Returns the protocol and root path a URL names, or raises StoreError naming the URL."""
        rest = self.location(url).strip("/") if self._protocol else self.location(url)
        if self._protocol:
            protocol, path = self._protocol, rest
        else:
            protocol, _, path = rest.partition("/")
            if not protocol or not path.strip("/"):
                raise StoreError(f"store URL {url!r}: expected fsspec://PROTOCOL/PATH, "
                                 "such as fsspec://memory/team or fsspec://file/srv/store")
        path = path.strip("/")
        if protocol in LOCAL_PROTOCOLS:
            return Target(protocol, "/" + path)
        if protocol in OBJECT_STORES and not path.split("/", 1)[0]:
            raise StoreError(f"store URL {url!r} names no bucket")
        return Target(protocol, path)

    def settings(self, account: Mapping[str, Any], job: Mapping[str, Any], base_dir: Path) -> FsspecSettings:
        return FsspecSettings(
            endpoint_url=account.get("endpoint_url"), profile=account.get("profile"),
            anon=bool(account.get("anon") or False), storage_options=dict(account.get("storage_options") or {}),
            retries=job.get("fsspec_retries", DEFAULT_RETRIES),
            retry_seconds=float(job.get("fsspec_retry_seconds", DEFAULT_RETRY_SECONDS)))

    def check(self, account: Account) -> list[str]:
        try:
            target = self.target(account.url)
        except StoreError as e:
            return [str(e)]
        settings = settings_of(account)
        problems = []
        s3 = target.protocol in ("s3", "s3a")
        if (settings.endpoint_url or settings.profile) and not s3:
            key = "endpoint_url" if settings.endpoint_url else "profile"
            problems.append(f"{key}: only S3 stores read it; for {account.url!r} put the filesystem's own "
                            "options in storage_options")
        known = known_protocols()
        if known is not None and target.protocol not in known:
            problems.append(f"store {account.url!r}: fsspec knows no protocol {target.protocol!r}; "
                            "see fsspec.available_protocols() for the ones it does")
        return problems

    def open(self, account: Account) -> Store:
        from shardrun.storage.fsspec_store.store import open_fsspec_store

        return open_fsspec_store(account, self.target(account.url), settings_of(account))

    def describe(self, account: Account) -> str:
        target = self.target(account.url)
        settings = settings_of(account)
        if settings.anon:
            return "anonymous (a public bucket)"
        if target.protocol in ("s3", "s3a"):
            who = f"AWS profile {settings.profile!r}" if settings.profile else \
                "AWS credentials from the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, a role)"
            return who + (f" at {settings.endpoint_url}" if settings.endpoint_url else "")
        if target.protocol in ("gcs", "gs"):
            return "Google application default credentials (GOOGLE_APPLICATION_CREDENTIALS or gcloud)"
        return f"fsspec {target.protocol!r} filesystem" + (" with storage_options" if settings.storage_options else "")


S3_BACKEND = FsspecBackend("s3", "s3")
GS_BACKEND = FsspecBackend("gs", "gcs")
FSSPEC_BACKEND = FsspecBackend("fsspec", None)

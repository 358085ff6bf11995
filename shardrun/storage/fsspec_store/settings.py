"""An fsspec account's typed settings, where its objects live (protocol and root), and what each
protocol needs installed. Standard library only: the backend's declaration (read to validate a
job file), the store and the registry's install hints all import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from shardrun.storage.account import Account

DEFAULT_RETRIES = 5
DEFAULT_RETRY_SECONDS = 120.0

# fsspec protocols whose single-object write is atomic on the server (an object appears whole
# when its upload completes): writes go straight to the key. Others write a temporary key and move it.
OBJECT_STORES = frozenset({"s3", "s3a", "gcs", "gs"})
# Local file systems: fsspec://file/tmp/x names the absolute path /tmp/x.
LOCAL_PROTOCOLS = frozenset({"file", "local"})
S3_HINT = "install the S3 extra: pip install 'shardrun[s3]'"
GCS_HINT = "install the GCS extra: pip install 'shardrun[gcs]'"
FSSPEC_HINT = "install fsspec: pip install 'shardrun[fsspec]' (and the filesystem package of the protocol)"
# The extra that installs a protocol's filesystem; other protocols name fsspec's own hint.
EXTRAS = {"s3": "s3", "s3a": "s3", "gcs": "gcs", "gs": "gcs"}


def install_hint(protocol: str) -> str:
    """Returns the command that installs what a protocol's filesystem needs."""
    extra = EXTRAS.get(protocol)
    return S3_HINT if extra == "s3" else GCS_HINT if extra == "gcs" else FSSPEC_HINT


@dataclass(frozen=True)
class Target:
    """Where an fsspec store's objects live: the fsspec protocol and the path of the store's root
    (`bucket/prefix` for object stores; the bucket is its first part)."""

    protocol: str
    root: str

    @property
    def bucket(self) -> str | None:
        return self.root.split("/", 1)[0] if self.protocol in OBJECT_STORES else None

    @property
    def prefix(self) -> str:
        return self.root.split("/", 1)[1] if self.bucket and "/" in self.root else ""


@dataclass(frozen=True)
class FsspecSettings:
    """An fsspec account's job-file settings. `storage_options` may hold secrets: kept out of repr."""

    endpoint_url: str | None = None  # an S3-compatible server (MinIO, moto); None: AWS itself
    profile: str | None = None  # an AWS profile of ~/.aws/config
    anon: bool = False  # a public bucket, read without credentials
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    retries: int = DEFAULT_RETRIES
    retry_seconds: float = DEFAULT_RETRY_SECONDS


def settings_of(account: Account) -> FsspecSettings:
    """Returns the account's fsspec settings; the defaults where it has none (a job URL's home)."""
    return account.settings if isinstance(account.settings, FsspecSettings) else FsspecSettings()

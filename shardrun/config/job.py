"""The job file (TOML) as typed objects.

Validation reads the whole file before it complains, so a user fixes every problem in one pass:
each problem names the key (`runs[1].scale`), the value given and what is allowed, and an
unknown key comes with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardrun.errors import ConfigError
from shardrun.validate import Key, check_table, non_negative, one_of, positive, read_toml, unknown_key_problem
from shardrun.storage.registry import SCHEMES

GB = 1_000_000_000  # Drive counts quota in decimal gigabytes, and so do we
MB = 1_000_000

# Names of the model factories in shardrun.train.models, listed here so validating a job file
# never imports TensorFlow; tests/test_config.py checks the two lists agree.
MODEL_NAMES = ("srcnn-915", "srcnn-955", "fsrcnn", "espcn", "decusr")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


@dataclass(frozen=True)
class AccountConfig:
    name: str
    store: str
    quota_gb: float = 15.0
    # How a drive:// account signs in (docs/storage.md); never a secret in repr or messages.
    auth: str | None = None
    token: str | None = field(default=None, repr=False)
    credentials: str | None = None
    client_secrets: str | None = None

    @property
    def quota_bytes(self) -> int:
        return int(self.quota_gb * GB)


@dataclass(frozen=True)
class RunConfig:
    name: str
    model: str
    scale: int
    channels: int
    epochs: int
    batch_size: int
    patch_size: int
    seed: int = 0
    patches_per_image: int = 16
    learning_rate: float = 1e-3
    options: dict[str, Any] = field(default_factory=dict)
    patches_per_second: float | None = None  # overrides the throughput profile for this run

    def to_payload(self) -> dict[str, Any]:
        """Returns the run's settings as plain JSON values: what the plan records for the run and
        the trainer reads back (shardrun.train.trainer.TrainConfig.from_run)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class JobConfig:
    name: str
    data: str
    platform: str
    accounts: tuple[AccountConfig, ...]
    runs: tuple[RunConfig, ...]
    base_dir: Path  # the job file's folder: relative paths in the file are relative to it
    source: str = "<job>"
    shard_size_mb: int = 256
    reserve_mb: int = 512
    workers: int | None = None
    profile: str | None = None
    ledger: str | None = None
    lease_minutes: float = 10.0
    drive_root_url: str | None = None  # endpoint override (an emulator); else $SHARDRUN_DRIVE_ROOT_URL
    drive_chunk_mib: int = 8
    drive_retries: int = 7
    drive_retry_seconds: float = 300.0

    @property
    def home(self) -> AccountConfig:
        return self.accounts[0]

    @property
    def shard_size_bytes(self) -> int:
        return self.shard_size_mb * MB

    @property
    def reserve_bytes(self) -> int:
        return self.reserve_mb * MB

    @property
    def parallel_workers(self) -> int:
        return self.workers or len(self.accounts)

    @property
    def ledger_path(self) -> Path:
        path = Path(self.ledger) if self.ledger else Path(".shardrun") / self.name / "ledger.db"
        return path if path.is_absolute() else self.base_dir / path

    def store_account(self, account: AccountConfig) -> dict[str, Any]:
        """Returns what open_store needs to sign in as `account` (paths made absolute)."""
        def absolute(path: str | None) -> str | None:
            return None if path is None else str(self.base_dir / Path(path).expanduser())

        return {"name": account.name, "job": self.name, "auth": account.auth, "token": account.token,
                "credentials": absolute(account.credentials), "client_secrets": absolute(account.client_secrets),
                "root_url": self.drive_root_url, "chunk_mib": self.drive_chunk_mib,
                "retries": self.drive_retries, "retry_seconds": self.drive_retry_seconds}

    def open_store(self, account: AccountConfig):
        """Returns the account's store, opened with its quota and sign-in settings."""
        from shardrun.storage.registry import open_store

        return open_store(account.store, account.quota_bytes, self.base_dir, self.store_account(account))

    def account(self, name: str) -> AccountConfig:
        for account in self.accounts:
            if account.name == name:
                return account
        raise ConfigError(self.source, [f"no account named {name!r}; the job has: "
                                        + ", ".join(a.name for a in self.accounts)])


# -- a small declarative validator --------------------------------------------------------------


def valid_name(value) -> str | None:
    return None if _NAME.match(value) else NAME_RULE


def valid_store_url(value) -> str | None:
    scheme, sep, rest = value.partition("://")
    if sep and scheme in SCHEMES and rest:
        return None
    return "a store URL: " + " or ".join(f"{s}://..." for s in SCHEMES)


JOB_KEYS = {
    "name": Key(str, required=True, check=valid_name),
    "data": Key(str, required=True),
    "platform": Key(str, default="colab-free"),
    "shard_size_mb": Key(int, default=256, check=positive),
    "reserve_mb": Key(int, default=512, check=non_negative),
    "workers": Key(int, check=positive),
    "profile": Key(str),
    "ledger": Key(str),
    "lease_minutes": Key((int, float), default=10, check=positive),
    "drive_root_url": Key(str, check=lambda v: None if v.startswith(("http://", "https://")) else "an http(s):// URL"),
    "drive_chunk_mib": Key(int, default=8, check=positive),
    "drive_retries": Key(int, default=7, check=non_negative),
    "drive_retry_seconds": Key((int, float), default=300, check=positive),
}
ACCOUNT_KEYS = {
    "name": Key(str, required=True, check=valid_name),
    "store": Key(str, required=True, check=valid_store_url),
    "quota_gb": Key((int, float), default=15.0, check=positive),
    "auth": Key(str, check=one_of("colab", "oauth", "service-account", "token")),
    "token": Key(str),
    "credentials": Key(str),
    "client_secrets": Key(str),
}
DRIVE_ONLY_KEYS = ("auth", "token", "credentials", "client_secrets")
RUN_KEYS = {
    "name": Key(str, required=True, check=valid_name),
    "model": Key(str, required=True, check=one_of(*MODEL_NAMES)),
    "scale": Key(int, required=True, check=one_of(2, 3, 4)),
    "channels": Key(int, required=True, check=one_of(1, 3)),
    "epochs": Key(int, required=True, check=positive),
    "batch_size": Key(int, required=True, check=positive),
    "patch_size": Key(int, required=True, check=positive),
    "seed": Key(int, default=0, check=non_negative),
    "patches_per_image": Key(int, default=16, check=positive),
    "learning_rate": Key((int, float), default=1e-3, check=positive),
    "options": Key(dict, default={}),
    "patches_per_second": Key((int, float), check=positive),
}
TOP_KEYS = ("job", "accounts", "runs")


def _check_list(doc: dict, key: str, spec: dict[str, Key], problems: list[str]) -> list[dict]:
    items = doc.get(key)
    if items is None:
        problems.append(f"{key}: missing; add at least one [[{key}]] table")
        return []
    if not isinstance(items, list) or not items:
        problems.append(f"{key}: must be one or more [[{key}]] tables, got {items!r}")
        return []
    return [check_table(item, f"{key}[{i}].", spec, problems) for i, item in enumerate(items)]


def _check_unique(items: list[dict], list_name: str, field_name: str, problems: list[str]) -> None:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = item.get(field_name)
        if value is None:
            continue
        if value in seen:
            problems.append(
                f"{list_name}[{i}].{field_name} = {value!r}: already used by "
                f"{list_name}[{seen[value]}]; each must be different"
            )
        else:
            seen[value] = i


def _check_run(run: dict, where: str, problems: list[str]) -> None:
    scale, patch = run.get("scale"), run.get("patch_size")
    if scale in (2, 3, 4) and isinstance(patch, int) and patch > 0:
        if patch % scale:
            problems.append(f"{where}patch_size = {patch}: must be a multiple of scale ({scale})")
        elif patch // scale < 4:
            problems.append(f"{where}patch_size = {patch}: must be at least {4 * scale} at scale {scale} "
                            "(a low-resolution patch of 4x4 pixels)")


def _check_sign_in(account: dict, root_url: str | None, where: str, problems: list[str]) -> None:
    """Appends problems with a Drive account's sign-in keys (and such keys on other stores)."""
    given = [key for key in DRIVE_ONLY_KEYS if account.get(key) is not None]
    if not isinstance(account.get("store"), str) or not given:
        return
    if not account["store"].startswith("drive://"):
        problems.append(f"{where}{given[0]}: only drive:// stores sign in; remove it for {account['store']!r}")
        return
    from shardrun.storage.drive.auth import DriveAccount, check_settings

    settings = DriveAccount.from_mapping({**account, "root_url": root_url})
    # The token itself is never shown: a problem names the key, not its value.
    problems.extend(f"{where}{problem}" for problem in check_settings(settings))


def parse_job(text: str, base_dir: Path, source: str = "<job>", platforms: dict | None = None) -> JobConfig:
    """Returns the job described by TOML `text`, or raises ConfigError listing every problem."""
    doc = read_toml(text, source)
    problems: list[str] = []
    for key in doc:
        if key not in TOP_KEYS:
            problems.append(unknown_key_problem("", key, TOP_KEYS))
    if "job" not in doc:
        problems.append("job: missing; add a [job] table with at least name and data")
    job = check_table(doc.get("job", {}), "job.", JOB_KEYS, problems)
    accounts = _check_list(doc, "accounts", ACCOUNT_KEYS, problems)
    runs = _check_list(doc, "runs", RUN_KEYS, problems)
    _check_unique(accounts, "accounts", "name", problems)
    _check_unique(accounts, "accounts", "store", problems)
    _check_unique(runs, "runs", "name", problems)
    for i, run in enumerate(runs):
        _check_run(run, f"runs[{i}].", problems)
    for i, account in enumerate(accounts):
        _check_sign_in(account, job.get("drive_root_url"), f"accounts[{i}].", problems)
    if platforms is not None and isinstance(job.get("platform"), str) and job["platform"] not in platforms:
        problems.append(f"job.platform = {job['platform']!r}: must be one of "
                        + ", ".join(map(repr, sorted(platforms))) + " (from configs/platforms.toml)")
    if problems:
        raise ConfigError(source, problems)
    return JobConfig(
        name=job["name"],
        data=job["data"],
        platform=job["platform"],
        accounts=tuple(AccountConfig(a["name"], a["store"], float(a["quota_gb"]), a["auth"], a["token"],
                                     a["credentials"], a["client_secrets"]) for a in accounts),
        runs=tuple(RunConfig(**{k: (float(v) if k in ("learning_rate", "patches_per_second") and v is not None else v)
                                for k, v in run.items()}) for run in runs),
        base_dir=base_dir,
        source=source,
        shard_size_mb=job["shard_size_mb"],
        reserve_mb=job["reserve_mb"],
        workers=job["workers"],
        profile=job["profile"],
        ledger=job["ledger"],
        lease_minutes=float(job["lease_minutes"]),
        drive_root_url=job["drive_root_url"],
        drive_chunk_mib=job["drive_chunk_mib"],
        drive_retries=job["drive_retries"],
        drive_retry_seconds=float(job["drive_retry_seconds"]),
    )


def load_job(path: str | Path, platforms: dict | None = None) -> JobConfig:
    """Returns the job in the TOML file at `path` (see parse_job)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(str(path), ["no such file"]) from e
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), [f"not valid TOML: not UTF-8 text ({e.reason} at byte {e.start})"]) from e
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror}"]) from e
    if platforms is None:
        from shardrun.config.platforms import load_platforms

        platforms = load_platforms()
    return parse_job(text, path.resolve().parent, str(path), platforms)

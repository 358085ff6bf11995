"""`shardrun accounts`: who each of the job's accounts signs in as, its quota, and whether it works.

`list_accounts` asks each store for its identity and usage; `check_accounts` also writes, reads
back and deletes a small probe object in each account's folder. Accounts are asked in parallel
(each is an API round trip or a folder walk) and every failure is one line naming the account.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shardrun import paths
from shardrun.config.job import AccountConfig, JobConfig
from shardrun.errors import ShardrunError
from shardrun.storage import registry


@dataclass
class AccountInfo:
    name: str
    store: str
    signs_in: str  # how (never with a secret): "oauth (~/.config/shardrun/tokens/job-alice.json)", "local folder"
    quota_bytes: int  # from the job file
    identity: str | None = None  # as the store knows it: Drive's email; None for local folders
    used_bytes: int | None = None
    limit_bytes: int | None = None  # the store's own limit (Drive), capped by the job file's quota
    problem: str | None = None  # why the account cannot be used, in one line

    @property
    def ok(self) -> bool:
        return self.problem is None


def sign_in_method(job: JobConfig, account: AccountConfig) -> str:
    """Returns how the account signs in, for people (no secret in it)."""
    return registry.describe_sign_in(job.store_account(account))


def _inspect(job: JobConfig, account: AccountConfig, probe: bool) -> AccountInfo:
    info = AccountInfo(account.name, account.store, sign_in_method(job, account), account.quota_bytes)
    try:
        store = job.open_store(account)
        info.identity = store.identity()
        usage = store.usage()
        info.used_bytes, info.limit_bytes = usage.used_bytes, usage.limit_bytes
        if probe:
            _probe(store, job.name)
    except ShardrunError as e:
        info.problem = str(e).splitlines()[0]
    return info


def _probe(store, job: str) -> None:
    from shardrun.errors import IntegrityError

    key = paths.probe_key(job, uuid.uuid4().hex[:12])
    body = f"shardrun accounts check {key}\n".encode()
    store.put_bytes(key, body)
    try:
        if store.get_bytes(key) != body:
            raise IntegrityError(f"{store.url}: the probe {key} read back different bytes")
    finally:
        store.delete(key)
    if store.exists(key):
        raise IntegrityError(f"{store.url}: the probe {key} is still there after deleting it")


def list_accounts(job: JobConfig) -> list[AccountInfo]:
    """Returns each account's sign-in, identity and usage; an unreachable one carries its problem."""
    return _inspect_all(job, probe=False)


def check_accounts(job: JobConfig) -> list[AccountInfo]:
    """Returns list_accounts' answer after writing, reading and deleting a probe in each folder.

    Two accounts that sign in as the same person (Drive's email; local folders and memory have
    no identity) are a problem too: files written for one would count against the other's quota.
    """
    infos = _inspect_all(job, probe=True)
    seen: dict[str, str] = {}
    for info in infos:
        if info.identity:
            if info.identity in seen and info.ok:
                info.problem = (f"signs in as {info.identity}, like account {seen[info.identity]}: files written "
                                f"for {info.name} would count against that person's quota; sign in as its owner")
            seen.setdefault(info.identity, info.name)
    return infos


def _inspect_all(job: JobConfig, probe: bool) -> list[AccountInfo]:
    with ThreadPoolExecutor(max(1, min(8, len(job.accounts)))) as pool:
        return list(pool.map(lambda a: _inspect(job, a, probe), job.accounts))


def login_accounts(job: JobConfig, names: list[str] | None, prompt, open_browser: bool = True) -> list[tuple[str, str]]:
    """Signs in each named account (default: all that use OAuth) with the installed-app flow.

    Returns (account, token file) pairs. `prompt(account, url)` shows the sign-in URL, which the
    account's owner opens to sign in themselves.
    """
    chosen = [job.account(n) for n in names] if names else list(job.accounts)
    done = []
    for account in chosen:
        store_account = job.store_account(account)
        method = registry.sign_in_method(store_account)
        if method is None:
            if names:
                raise ShardrunError(f"account {account.name!r} uses {account.store}, which needs no sign-in")
            continue
        if method != "oauth":
            if names:
                raise ShardrunError(f"account {account.name!r} signs in with {method!r}, not OAuth; "
                                    "`accounts login` runs the OAuth flow only")
            continue
        path = registry.login(store_account, lambda url, name=account.name: prompt(name, url), open_browser)
        done.append((account.name, str(path)))
    return done

"""The one place where storage keys are built: every object of a job lives under `<job>/`."""

from __future__ import annotations

from shardrun.storage.base import validate_key


def job_prefix(job: str) -> str:
    return f"{job}/"


def journal_prefix(job: str) -> str:
    return f"{job}/journal/"


def event_key(job: str, event_id: str) -> str:
    return validate_key(f"{job}/journal/{event_id}.json")


def event_id_of(key: str) -> str:
    """Returns the event id a journal key holds (the inverse of event_key)."""
    name = key[key.rfind("/") + 1:]
    return name[:-5] if name.endswith(".json") else name


def shards_prefix(job: str) -> str:
    return f"{job}/shards/"


def shard_key(job: str, shard_id: str) -> str:
    return validate_key(f"{job}/shards/{shard_id}.tar")


def manifest_key(job: str, plan_id: str) -> str:
    return validate_key(f"{job}/plans/{plan_id}/manifest.json")


def ledger_snapshot_key(job: str) -> str:
    return validate_key(f"{job}/ledger/snapshot.db")


def checkpoint_key(job: str, run: str, chunk: int, generation: int, worker: str, step: int) -> str:
    """Returns an immutable key per attempt and step, so no two workers ever write the same one."""
    return validate_key(f"{job}/checkpoints/{run}/chunk-{chunk:05d}/g{generation}-{worker}/step-{step:012d}.ckpt")


def probe_key(job: str, token: str) -> str:
    """Returns the key `shardrun accounts check` writes, reads back and deletes."""
    return validate_key(f"{job}/probes/{token}.txt")

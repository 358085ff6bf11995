"""The one place where storage keys are built: every object of a job lives under `<job>/`."""

from __future__ import annotations

import re

from shardrun.errors import InvalidKey


def job_prefix(job: str) -> str:
    return f"{job}/"


# The folders a job keeps under `<job>/`. An account whose own folder holds them directly is some
# job's folder: a store URL pointed one level too deep (plan refuses it).
JOB_FOLDERS = ("journal/", "shards/")


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


def shard_id_of(key: str) -> str:
    """Returns the shard id a shard key holds (the inverse of shard_key)."""
    return key[key.rfind("/") + 1:].removesuffix(".tar")


def manifest_key(job: str, plan_id: str) -> str:
    return validate_key(f"{job}/plans/{plan_id}/manifest.json")


def ledger_snapshot_key(job: str) -> str:
    return validate_key(f"{job}/ledger/snapshot.db")


def checkpoint_key(job: str, run: str, chunk: int, generation: int, worker: str, step: int) -> str:
    """Returns an immutable key per attempt and step, so no two workers ever write the same one."""
    return validate_key(f"{job}/checkpoints/{run}/chunk-{chunk:05d}/g{generation}-{worker}/step-{step:012d}.ckpt")


def checkpoints_prefix(job: str, run: str, chunk: int | None = None) -> str:
    """Returns the folder of a run's checkpoints (and their validation pictures), or of one chunk's."""
    folder = f"{job}/checkpoints/{run}/"
    return validate_prefix(folder if chunk is None else f"{folder}chunk-{chunk:05d}/")


_CHECKPOINT_OBJECT = re.compile(r"checkpoints/(?P<run>[^/]+)/chunk-(?P<chunk>\d+)/g(?P<generation>\d+)-(?P<worker>[^/]+)"
                                r"/step-(?P<step>\d+)\.(?P<kind>ckpt|val\.png)")


def checkpoint_object_of(job: str, key: str) -> dict | None:
    """Returns what a key under the job's checkpoints folder names (run, chunk, generation, worker,
    step and kind: "ckpt" or "val.png"; the inverse of checkpoint_key and validation_pictures_key),
    or None for a key of another shape."""
    found = _CHECKPOINT_OBJECT.fullmatch(key[len(job) + 1:]) if key.startswith(f"{job}/") else None
    if found is None:
        return None
    parts = found.groupdict()
    return {**parts, "chunk": int(parts["chunk"]), "generation": int(parts["generation"]), "step": int(parts["step"])}


def validation_set_key(job: str, digest: str) -> str:
    """The validation crops the plan chose (an .npz), named by the content they were cut from."""
    return validate_key(f"{job}/validation/set-{digest[:24]}.npz")


def validation_pictures_key(job: str, run: str, chunk: int, generation: int, worker: str, step: int) -> str:
    """A checkpoint's validation pictures: bicubic, the network and the original, side by side (PNG)."""
    return validate_key(f"{job}/checkpoints/{run}/chunk-{chunk:05d}/g{generation}-{worker}/step-{step:012d}.val.png")


def run_file_key(job: str, sha256: str, suffix: str) -> str:
    """Returns the key of a file a run trains with (its own network's .py, its init weights):
    named by its content, so every worker loads the same bytes and a changed file is a new key."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256) or not re.fullmatch(r"(\.[A-Za-z0-9]{1,8}){0,2}", suffix):
        raise InvalidKey(f"run file {sha256!r}{suffix!r}: expected a sha256 hex digest and a plain suffix")
    return validate_key(f"{job}/files/{sha256}{suffix}")


def probe_key(job: str, token: str) -> str:
    """Returns the key `shardrun accounts check` writes, reads back and deletes."""
    return validate_key(f"{job}/probes/{token}.txt")


_BAD_KEY_CHARS = re.compile(r"[\\\x00-\x1f]")


def validate_key(key: str) -> str:
    """Returns `key` unchanged if it is a clean relative path, else raises InvalidKey."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"store key must be a non-empty string, got {key!r}")
    if key.startswith("/"):
        raise InvalidKey(f"store key {key!r} is absolute; keys are relative paths like 'a/b/c'")
    if _BAD_KEY_CHARS.search(key):
        raise InvalidKey(f"store key {key!r} contains a backslash or a control character")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKey(f"store key {key!r} has an empty, '.' or '..' part")
    return key


def validate_prefix(prefix: str) -> str:
    """Returns a listing prefix ('' or a clean key, optionally ending in '/')."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/"))
    return prefix


# -- local files of `status --tensorboard DIR` (a folder on the machine running status) --

TENSORBOARD_STATE = "shardrun-tensorboard.json"  # what was written, per run and tag


def tensorboard_run_folder(run: str) -> str:
    """Returns the subfolder of DIR that holds one run's event files (one TensorBoard run)."""
    return validate_key(run)


def tensorboard_event_file(sequence: int) -> str:
    """Returns the name of the event file a call writes: `tfevents` lets TensorBoard find it, and
    the zero-padded call number makes name order call order (TensorBoard reads files in name order)."""
    return f"events.out.tfevents.{sequence:010d}.shardrun"

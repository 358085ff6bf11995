"""The one place where storage keys are built: every object of a job lives under `<job>/`."""

from __future__ import annotations

import datetime as _dt
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
    """Returns the key of an event in the journal's flat folder (journal v1: `<job>/journal/<id>.json`),
    where shardrun before the bucketed layout wrote every event; readers still read it."""
    return validate_key(f"{job}/journal/{event_id}.json")


# The bucketed journal (docs/worker.md, "The journal's layout"): `journal/v2/<YYYY-MM>/<DDTHH>/<id>.json`,
# one folder per month holding one folder per hour, so no folder and no listing grows with the job.
BUCKET_SECONDS = 3600


def journal_v2_prefix(job: str) -> str:
    return f"{job}/journal/v2/"


def bucket_start(t: float) -> int:
    """Returns the start (seconds since the epoch, UTC) of the hour bucket holding time `t`."""
    return int(t // BUCKET_SECONDS) * BUCKET_SECONDS


def bucket_folder(start: int) -> str:
    """Returns `<YYYY-MM>/<DDTHH>` of the bucket starting at `start` (UTC)."""
    d = _dt.datetime.fromtimestamp(start, _dt.timezone.utc)
    return f"{d.year:04d}-{d.month:02d}/{d.day:02d}T{d.hour:02d}"


_MONTH = re.compile(r"(\d{4})-(\d{2})")
_HOUR = re.compile(r"(\d{2})T(\d{2})")


def month_start(name: str) -> int | None:
    """Returns the start of the month a month folder (`YYYY-MM`) names, or None for another name."""
    m = _MONTH.fullmatch(name)
    if not m or not 1 <= int(m[2]) <= 12 or int(m[1]) < 1970:
        return None
    return int(_dt.datetime(int(m[1]), int(m[2]), 1, tzinfo=_dt.timezone.utc).timestamp())


def bucket_start_of(month: str, hour: str) -> int | None:
    """Returns the start of the bucket `<month>/<hour>` names (`2024-06`, `05T13`), or None."""
    first = month_start(month)
    m = _HOUR.fullmatch(hour)
    if first is None or not m or int(m[2]) > 23 or int(m[1]) < 1:
        return None
    d = _dt.datetime.fromtimestamp(first, _dt.timezone.utc)
    try:
        start = d.replace(day=int(m[1]), hour=int(m[2]))
    except ValueError:  # the 31st of a 30-day month
        return None
    return int(start.timestamp())


def bucket_prefix(job: str, start: int) -> str:
    return f"{journal_v2_prefix(job)}{bucket_folder(start)}/"


def bucket_event_key(job: str, start: int, event_id: str) -> str:
    """Returns the key of an event written in the bucket starting at `start`."""
    return validate_key(f"{bucket_prefix(job, start)}{event_id}.json")


def bucket_of_key(job: str, key: str) -> int | None:
    """Returns the bucket start of a bucketed journal key, or None if `key` is not one (a flat v1
    key, or a name under journal/v2/ that is no bucket)."""
    prefix = journal_v2_prefix(job)
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix):].split("/")
    return bucket_start_of(parts[0], parts[1]) if len(parts) == 3 else None


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


def round_object_key(job: str, run: str, round_: int, name: str) -> str:
    """Returns the key of one object of a collaborative run's round (a replica's change, the global
    weights, the outer momentum, the global network's checkpoint); each name holds its writer and
    its content's hash, so no two workers write the same key and every reader can verify it."""
    return validate_key(f"{job}/rounds/{run}/r{round_:06d}/{name}")


def round_prefix(job: str, run: str, round_: int) -> str:
    """Returns the folder of one round of a collaborative run."""
    return validate_prefix(f"{job}/rounds/{run}/r{round_:06d}/")


_ROUND_OBJECT = re.compile(r"rounds/(?P<run>[^/]+)/r(?P<round>\d{6})/[^/]+")


def round_of(job: str, key: str) -> tuple[str, int] | None:
    """Returns (run, round) of a key under the job's rounds folder, or None for another shape."""
    found = _ROUND_OBJECT.fullmatch(key[len(job) + 1:]) if key.startswith(f"{job}/") else None
    return None if found is None else (found["run"], int(found["round"]))


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

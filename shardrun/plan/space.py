"""Pure: the home account's room for the checkpoints retention keeps (ledger/retention.py), and
the one-line reason `plan` gives when the home is too small for them (docs/planning.md)."""

from __future__ import annotations

from dataclasses import dataclass

from shardrun.config.job import GB, MB
from shardrun.ledger.retention import RetentionRule, retained_bound
from shardrun.plan.placement import AccountSpace, RunPlan
from shardrun.plan.validation import PICTURE_CROPS, PICTURE_SIDE
from shardrun.units import human_bytes

# A checkpoint's validation pictures: PICTURE_CROPS rows of three RGB panels of PICTURE_SIDE a
# side, at most (a PNG of noise is barely larger than its pixels), and the PNG's own headers.
PICTURES_BYTES = PICTURE_CROPS * PICTURE_SIDE * 3 * PICTURE_SIDE * 3 + 4096


@dataclass(frozen=True)
class RetainedSpace:
    """What retention keeps on the home account at most, all runs together."""

    files: int  # checkpoint files
    bytes: int  # theirs and their validation pictures'
    largest: int  # the largest run's checkpoint file, in bytes

    def describe(self) -> str:
        return (f"up to {self.files} checkpoints (about {human_bytes(self.largest)} each at most, "
                f"{human_bytes(self.bytes)} with their validation pictures)")


def retained_space(runs: list[RunPlan], checkpoint_bytes: dict[str, int], lease_seconds: float,
                   rule: RetentionRule | None = None) -> RetainedSpace:
    """Returns the most the home holds of checkpoints at once, from each run's chunks
    (retention.retained_bound) and its checkpoint's size (train/checkpoint.estimated_size)."""
    files = total = largest = 0
    for r in runs:
        size = checkpoint_bytes.get(r.run.name, 0)
        count = retained_bound(len(r.chunks), lease_seconds, rule=rule)
        files += count
        total += count * (size + PICTURES_BYTES) + PICTURES_BYTES  # and the pictures status shows
        largest = max(largest, size)
    return RetainedSpace(files, total, largest)


def home_space(home: AccountSpace, existing_checkpoints: int) -> AccountSpace:
    """Returns the home's space with this job's checkpoints already on it left out of what it uses:
    they are among those retention keeps, counted by retained_space instead."""
    return AccountSpace(home.name, home.quota_bytes, max(0, home.used_bytes - existing_checkpoints),
                        home.reserve_bytes)


def room_for_shards(home: AccountSpace, retained: RetainedSpace) -> AccountSpace:
    """Returns the home's space as shard placement sees it: the checkpoints' room kept back too."""
    return AccountSpace(home.name, home.quota_bytes, home.used_bytes, home.reserve_bytes, retained.bytes)


def home_too_small(home: AccountSpace, retained: RetainedSpace) -> str | None:
    """Returns why the home account (its home_space) cannot hold the checkpoints retention keeps,
    in one line, or None when it can."""
    room = home.quota_bytes - home.used_bytes - home.reserve_bytes
    if retained.bytes <= room:
        return None
    return (f"The home account {home.name} is too small for the checkpoints retention keeps there: "
            f"{retained.describe()}, but {human_bytes(max(0, room))} is left on it after reserve_mb = "
            f"{home.reserve_bytes // MB} (quota_gb = {home.quota_bytes / GB:g}, {human_bytes(home.used_bytes)} "
            "used); raise its quota_gb, lower reserve_mb, or list a larger account first (the first account "
            "is the home). Nothing was written.")

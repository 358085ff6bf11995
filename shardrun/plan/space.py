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
class RoundSpace:
    """What one collaborative run's round keeps on the home at least: each replica's change, the
    global weights and the outer momentum, each the network's weights in float32."""

    run: str
    position: int  # in the job file's runs
    replicas: int
    change_bytes: int  # one change (train/outer.packed_size of the network's weights)

    @property
    def files(self) -> int:
        return self.replicas + 2

    @property
    def bytes(self) -> int:
        return self.files * self.change_bytes

    def describe(self) -> str:
        return (f"a round of run {self.run!r} (runs[{self.position}]) keeps its {self.replicas} replicas' changes, "
                f"the global weights and the outer momentum: {self.files} x {human_bytes(self.change_bytes)} = "
                f"{human_bytes(self.bytes)}")


@dataclass(frozen=True)
class RetainedSpace:
    """What retention keeps on the home account at most, all runs together."""

    files: int  # checkpoint files
    bytes: int  # theirs and their validation pictures'
    largest: int  # the largest run's checkpoint file, in bytes
    rounds: tuple[RoundSpace, ...] = ()  # each collaborative run's round

    @property
    def round_bytes(self) -> int:
        return sum(r.bytes for r in self.rounds)

    @property
    def total_bytes(self) -> int:
        """Returns the checkpoints' room and the rounds': what the home keeps from shards."""
        return self.bytes + self.round_bytes

    def describe(self) -> str:
        text = (f"up to {self.files} checkpoints (about {human_bytes(self.largest)} each at most, "
                f"{human_bytes(self.bytes)} with their validation pictures)")
        if self.rounds:
            text += f", and {human_bytes(self.round_bytes)} for the rounds of collaborative runs"
        return text


def retained_space(runs: list[RunPlan], checkpoint_bytes: dict[str, int], lease_seconds: float,
                   rule: RetentionRule | None = None, change_bytes: dict[str, int] | None = None) -> RetainedSpace:
    """Returns the most the home holds of checkpoints at once, from each run's chunks
    (retention.retained_bound; a collaborative run's replicas each keep their own) and its
    checkpoint's size (train/checkpoint.estimated_size), and the room each collaborative run's
    round needs (`change_bytes`: run -> one change's bytes)."""
    files = total = largest = 0
    rounds = []
    for position, r in enumerate(runs):
        size = checkpoint_bytes.get(r.run.name, 0)
        count = retained_bound(len(r.chunks), lease_seconds, rule=rule) * r.replicas
        files += count
        total += count * (size + PICTURES_BYTES) + PICTURES_BYTES  # and the pictures status shows
        largest = max(largest, size)
        if r.run.collaborative is not None:
            rounds.append(RoundSpace(r.run.name, position, r.replicas, (change_bytes or {}).get(r.run.name, 0)))
    return RetainedSpace(files, total, largest, tuple(rounds))


def home_space(home: AccountSpace, existing_checkpoints: int) -> AccountSpace:
    """Returns the home's space with this job's checkpoints already on it left out of what it uses:
    they are among those retention keeps, counted by retained_space instead."""
    return AccountSpace(home.name, home.quota_bytes, max(0, home.used_bytes - existing_checkpoints),
                        home.reserve_bytes)


def room_for_shards(home: AccountSpace, retained: RetainedSpace) -> AccountSpace:
    """Returns the home's space as shard placement sees it: the checkpoints' room kept back too."""
    return AccountSpace(home.name, home.quota_bytes, home.used_bytes, home.reserve_bytes, retained.total_bytes)


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


def home_too_small_for_rounds(home: AccountSpace, retained: RetainedSpace, shard_bytes: int = 0) -> str | None:
    """Returns why the home account (its home_space), with room for the checkpoints retention
    keeps (and the `shard_bytes` of shards that fit nowhere else), has none for a collaborative run's
    round beside them (its replicas' changes, the global weights, the outer momentum), in one
    line naming the first such run; else None (home_too_small speaks for a home too small for
    the checkpoints alone)."""
    room = home.quota_bytes - home.used_bytes - home.reserve_bytes - shard_bytes
    if retained.total_bytes <= room or retained.bytes > room:
        return None
    left = room - retained.bytes
    short = retained.rounds[-1]
    for short in retained.rounds:
        left -= short.bytes
        if left < 0:
            break
    beside = f"the checkpoints retention keeps ({human_bytes(retained.bytes)})"
    if shard_bytes:
        beside += f" and the shards it must hold ({human_bytes(shard_bytes)})"
    return (f"The home account {home.name} is too small for the collaborative runs: {short.describe()}, but "
            f"{human_bytes(room - retained.bytes)} is left on it beside {beside} after reserve_mb = "
            f"{home.reserve_bytes // MB} (quota_gb = {home.quota_bytes / GB:g}); raise its quota_gb, lower reserve_mb "
            "or replicas, or list a larger account first (the first account is the home). Nothing was written.")

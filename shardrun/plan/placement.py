"""Pure planning: shard placement on accounts, runs cut into chunks, and what the job will cost.

Nothing here touches a store or the disk; `shardrun.plan.job` gathers the inputs (scan,
usage, existing shards) and carries the plan out.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from shardrun.config.job import GB, MB, RunConfig
from shardrun.errors import PlanError
from shardrun.config.platforms import Platform, Profile
from shardrun.train.schedule import steps_per_epoch
from shardrun.units import human_bytes


# -- placement -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountSpace:
    """What an account can take: its quota, what is on it already and the reserve it keeps."""

    name: str
    quota_bytes: int
    used_bytes: int  # everything on the account now, this job's existing shards included
    reserve_bytes: int  # kept free for the journal, ledger snapshots (and checkpoints)
    checkpoint_bytes: int = 0  # the home's: kept for the checkpoints retention keeps (plan/space.py)

    @property
    def free_for_shards(self) -> int:
        """What the account has free after its reserve: which account a shard prefers."""
        return max(0, self.quota_bytes - self.reserve_bytes - self.used_bytes)

    @property
    def room_for_shards(self) -> int:
        """What shards may fill: the free space less the room the home keeps for checkpoints."""
        return max(0, self.free_for_shards - self.checkpoint_bytes)


@dataclass(frozen=True)
class ShardToPlace:
    id: str
    size: int


def place_shards(shards: list[ShardToPlace], accounts: list[AccountSpace],
                 existing: dict[str, str] | None = None) -> dict[str, str]:
    """Returns shard id -> account name, or raises PlanError saying how much space is missing.

    Shards already on an account (`existing`) stay there, so re-running a plan after an
    interruption uploads only what is missing. Each other shard goes, in order, to the account
    with the most free space left (ties: the earlier account) among those with room for it, which
    spreads consecutive shards over the team and keeps every account within quota minus reserve
    (and, on the home, minus the room kept for checkpoints: `checkpoint_bytes`).
    """
    existing = existing or {}
    free = {a.name: a.free_for_shards for a in accounts}
    room = {a.name: a.room_for_shards for a in accounts}
    order = {a.name: i for i, a in enumerate(accounts)}
    placement = {s.id: existing[s.id] for s in shards if s.id in existing}
    pending = [s for s in shards if s.id not in placement]
    for shard in pending:
        fitting = [name for name in free if room[name] >= shard.size]
        if not fitting:
            raise PlanError(_shortfall_message(pending, room, accounts, shard))
        best = min(fitting, key=lambda name: (-free[name], order[name]))
        placement[shard.id] = best
        free[best] -= shard.size
        room[best] -= shard.size
    return placement


def place_groups(groups: list[list[ShardToPlace]], accounts: list[AccountSpace],
                 existing: dict[str, str] | None = None) -> dict[str, str]:
    """Returns shard id -> account name with each group's shards on as few accounts as possible
    (a group: the shards of one part of a collaborative run), or raises PlanError as place_shards.

    A group that fits whole goes to the account with the most free space that can take it all
    (so parts spread over the team, as shards do in place_shards); a group too large for any one
    account fills the account with the most room, then the next, so it spans the fewest accounts
    the room allows. Shards already on an account (`existing`) stay there, and the rest of their
    group joins them where it fits.
    """
    existing = existing or {}
    free = {a.name: a.free_for_shards for a in accounts}
    room = {a.name: a.room_for_shards for a in accounts}
    order = {a.name: i for i, a in enumerate(accounts)}
    placement = {s.id: existing[s.id] for group in groups for s in group if s.id in existing}
    pending_all = [s for group in groups for s in group if s.id not in placement]

    def put(shard: ShardToPlace, name: str) -> None:
        placement[shard.id] = name
        free[name] -= shard.size
        room[name] -= shard.size

    for group in groups:
        pending = [s for s in group if s.id not in placement]
        need = sum(s.size for s in pending)
        whole = [name for name in room if room[name] >= need]
        holding = {placement[s.id] for s in group if s.id in placement}  # the part's shards kept from before
        if pending and whole:
            best = min(whole, key=lambda name: (name not in holding, -free[name], order[name]))
            for shard in pending:
                put(shard, best)
            continue
        current = None
        for shard in pending:
            if current is None or room[current] < shard.size:
                fitting = [name for name in room if room[name] >= shard.size]
                if not fitting:
                    raise PlanError(_shortfall_message(pending_all, room, accounts, shard))
                current = min(fitting, key=lambda name: (-room[name], order[name]))
            put(shard, current)
    return placement


def _shortfall_message(pending: list[ShardToPlace], free_now: dict[str, int],
                       accounts: list[AccountSpace], stuck: ShardToPlace) -> str:
    """Returns why the shards do not fit and what to change in the job file.

    Three causes are told apart, because each has its own remedy: the reserve leaves an account
    nothing (`reserve_mb` at least its `quota_gb`); the team has room in total but not for whole
    shards of `shard_size_mb`; or the team needs more space. In the second case the plan does not
    cut shards to fit: the layout is the job file's, the same on every re-plan, so the message
    says which `shard_size_mb` would fit instead of changing it behind the user's back.
    """
    needed = sum(s.size for s in pending)
    total_free = sum(a.room_for_shards for a in accounts)
    no_room = [a for a in accounts if a.reserve_bytes >= a.quota_bytes]
    reserve_note = ""
    if no_room:
        names = ", ".join(a.name for a in no_room)
        reserve = max(a.reserve_bytes for a in no_room)
        reserve_note = (f"the reserve (reserve_mb = {reserve // MB}) is as large as the quota of account"
                        f"{'s' if len(no_room) > 1 else ''} {names} "
                        f"(quota_gb = {min(a.quota_bytes for a in no_room) / GB:g}), so it leaves nothing there "
                        "for shards")
    if len(no_room) == len(accounts):
        return (f"{reserve_note[0].upper()}{reserve_note[1:]}. Lower reserve_mb below "
                f"{min(a.quota_bytes for a in accounts) // MB} or raise quota_gb above {reserve / GB:g}. "
                "Nothing was written.")
    if total_free >= needed:
        return _unfit_shard_message(accounts, free_now, stuck, needed, total_free)
    missing = max(needed - total_free, stuck.size - max(free_now.values()), 1)
    typical = max((a for a in accounts if a not in no_room), key=lambda a: a.quota_bytes - a.reserve_bytes)
    more = math.ceil(missing / (typical.quota_bytes - typical.reserve_bytes))
    return (f"the team's accounts are too small for the dataset: {needed:,} bytes of shards to place, "
            f"{total_free:,} bytes free after the reserve; {missing:,} more bytes needed "
            f"(about {more} more account{'s' if more > 1 else ''} of {typical.quota_bytes / GB:g} GB). "
            + (f"Note: {reserve_note}. " if reserve_note else "") + "Nothing was written.")


def _unfit_shard_message(accounts: list[AccountSpace], free_now: dict[str, int], stuck: ShardToPlace,
                         needed: int, total_free: int) -> str:
    """Returns the message for a team with room in total but no account with room for the next shard."""
    largest = max(accounts, key=lambda a: a.room_for_shards)
    room = (f"the team has {human_bytes(total_free)} free for {human_bytes(needed)} of shards, but a shard of "
            f"{human_bytes(stuck.size)} ({stuck.id}) fits in no account")
    if stuck.size > largest.room_for_shards:
        room += f": the most any account has free is {human_bytes(largest.room_for_shards)} (account {largest.name})"
        size = largest.room_for_shards // MB
        fix = (f"Set shard_size_mb = {size} (or less) in the job file so that shards fit, or make room on the "
               "accounts" if size >= 1 else "Make room on the accounts (none has 1 MB free)")
    else:
        # Each account took some shards, and what is left on each is smaller than one: smaller
        # shards would fill those remainders.
        room += f" once the others are placed: at most {human_bytes(max(free_now.values()))} is left on any account"
        fix = (f"Set a smaller shard_size_mb (below {math.ceil(stuck.size / MB)}) in the job file, so that shards "
               "fill what is left, or make room on the accounts")
    return f"{room[0].upper()}{room[1:]}. {fix}. Nothing was written."


# -- runs and chunks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    run: RunConfig
    patches_per_second: float
    throughput_source: str
    steps_per_epoch: int
    steps_total: int
    chunks: tuple[tuple[int, int], ...]  # [start_step, end_step) of each chunk, in chain order

    @property
    def step_seconds(self) -> float:
        return self.run.batch_size / self.patches_per_second

    @property
    def replicas(self) -> int:
        """Returns how many replicas train the run at once: each its own chain of `chunks`."""
        return self.run.replicas

    @property
    def rounds(self) -> int:
        """Returns a collaborative run's rounds (the last may be shorter than sync_every); 0 if plain."""
        collab = self.run.collaborative
        return math.ceil(self.steps_total / collab.sync_every) if collab else 0

    @property
    def train_seconds(self) -> float:
        return self.steps_total * self.step_seconds

    def chunk_seconds(self, index: int) -> float:
        start, end = self.chunks[index]
        return (end - start) * self.step_seconds


def throughput(run: RunConfig, profile: Profile | None) -> tuple[float, str]:
    """Returns (patches/s, where the figure came from) for a run, or raises PlanError."""
    if run.patches_per_second:
        return run.patches_per_second, f"runs.{run.name}.patches_per_second"
    if profile is None or run.model not in profile.models:
        known = ", ".join(sorted(profile.models)) if profile else "none"
        raise PlanError(f"run {run.name!r}: the throughput profile {profile.name if profile else ''!r} "
                        f"has no figure for model {run.model!r} (it has: {known}); measure one with "
                        f"`shardrun bench --model {run.model}` or set patches_per_second in the run")
    return profile.models[run.model].at_patch_size(run.patch_size), f"profile {profile.name}"


def cut_chunks(steps_total: int, step_seconds: float, usable_seconds: float | None) -> tuple[tuple[int, int], ...]:
    """Returns [start, end) step ranges, each trainable within `usable_seconds` (None: one chunk)."""
    if usable_seconds is None:
        return ((0, steps_total),)
    per_chunk = max(1, int(usable_seconds // step_seconds))
    return tuple((start, min(start + per_chunk, steps_total)) for start in range(0, steps_total, per_chunk))


def plan_run(run: RunConfig, num_images: int, profile: Profile | None, platform: Platform) -> RunPlan:
    """Returns the run cut into chunks that each fit one session of `platform`.

    A collaborative run's steps are each replica's: `epochs` passes over its part, counted on
    the smallest part (every replica trains the same steps a round). Its chunks are one
    replica's steps cut by the session; the plan records no chunks for it in the ledger (a
    replica's work comes in rounds), they count sessions in the estimate.
    """
    pps, source = throughput(run, profile)
    if run.collaborative is not None:
        if run.collaborative.replicas > num_images:  # `plan` names this first (parts.replica_problems)
            raise PlanError(f"run {run.name!r}: {run.collaborative.replicas} replicas need as many training images "
                            f"at least, one a part; the data has {num_images}")
        num_images //= run.collaborative.replicas  # the smallest part (parts.part_sizes)
    per_epoch = steps_per_epoch(num_images, run.patches_per_image, run.batch_size)
    total = per_epoch * run.epochs
    chunks = cut_chunks(total, run.batch_size / pps, platform.usable_seconds)
    return RunPlan(run, pps, source, per_epoch, total, chunks)


# -- estimates -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    gpu_hours: float  # training time alone
    sessions: int  # one per chunk
    session_hours: float  # training plus each session's start-up
    calendar_hours: float  # with `workers` sessions running at once
    workers: int
    per_run_calendar_hours: dict[str, float] = field(default_factory=dict)


def estimate(runs: list[RunPlan], platform: Platform, workers: int) -> Estimate:
    """Returns GPU-hours, sessions and calendar time with `workers` parallel workers.

    Runs are independent chains; within a run, chunk k+1 starts after chunk k. The calendar time
    is a list schedule: each free worker takes the next chunk of the run that can start earliest.
    """
    startup = platform.startup_minutes * 60
    gpu = sum(r.train_seconds * r.replicas for r in runs)
    sessions = sum(len(r.chunks) * r.replicas for r in runs)
    workers_free = [0.0] * max(1, workers)
    heapq.heapify(workers_free)
    # One chain per replica: a collaborative run's replicas train side by side (the waits of
    # its rounds are not counted: the estimate is the least it takes).
    by_name = {(r.run.name, i): r for r in runs for i in range(r.replicas)}
    run_ready = dict.fromkeys(by_name, 0.0)
    next_chunk = dict.fromkeys(by_name, 0)
    finish = dict.fromkeys(by_name, 0.0)
    for _ in range(sessions):
        worker_time = heapq.heappop(workers_free)
        name = min((n for n in by_name if next_chunk[n] < len(by_name[n].chunks)),
                   key=lambda n: (max(run_ready[n], worker_time), n))
        start = max(run_ready[name], worker_time)
        end = start + startup + by_name[name].chunk_seconds(next_chunk[name])
        next_chunk[name] += 1
        run_ready[name] = finish[name] = end
        heapq.heappush(workers_free, end)
    calendar = max(finish.values(), default=0.0)
    per_run: dict[str, float] = {}
    for (name, _), t in finish.items():
        per_run[name] = max(per_run.get(name, 0.0), t / 3600)
    return Estimate(gpu / 3600, sessions, (gpu + sessions * startup) / 3600, calendar / 3600, workers, per_run)

"""Pure: a collaborative run's images split into fixed, disjoint parts (one per replica), and the
shard layout that keeps every part a whole number of shards (docs/collaborative.md).

The split: the images sorted by their content hash (sha256), cut into `replicas` consecutive
stretches whose sizes differ by one image at most (the first `n % replicas` parts take one more).
- Sorted and cut, not a hash modulo N: the parts are balanced exactly, so each replica's worker
  downloads about 1/N of the data and every replica has the same steps per epoch (a hash modulo
  3 may give 12 images as parts of 2, 5 and 5).
- By content hash, not by path: renaming or moving files changes no part, and the order knows
  nothing of the folders, so a part is a sample of the whole data rather than one patient's or
  one camera's folder (replicas that see alike data drift apart less between rounds).
- The same images and replicas always give the same parts, on any machine.

Several collaborative runs with different replicas share the job's one set of shards: the
layout cuts the sorted images at every run's part boundaries (the common refinement, still
consecutive stretches), so no shard mixes two parts of any run. A job with no collaborative run
is laid out exactly as `layout_shards` lays out the scan: this module changes nothing for it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from shardrun.config.job import RunConfig
from shardrun.plan.dataset import ImageInfo
from shardrun.plan.placement import RunPlan
from shardrun.plan.shards import ShardSpec, layout_shards


def part_bounds(count: int, replicas: int) -> list[int]:
    """Returns where the parts start in the sorted images, and the end: `replicas + 1` numbers."""
    if replicas < 1 or count < replicas:
        raise ValueError(f"{count} images cannot be split into {replicas} parts of at least one image")
    small, extra = divmod(count, replicas)
    bounds = [0]
    for i in range(replicas):
        bounds.append(bounds[-1] + small + (1 if i < extra else 0))
    return bounds


def part_sizes(count: int, replicas: int) -> list[int]:
    """Returns the images in each part, in replica order."""
    bounds = part_bounds(count, replicas)
    return [b - a for a, b in zip(bounds, bounds[1:])]


def by_content(images: Iterable[ImageInfo]) -> list[ImageInfo]:
    """Returns the images in the order parts are cut from: by sha256."""
    return sorted(images, key=lambda image: image.sha256)


def split_parts(images: Sequence[ImageInfo], replicas: int) -> list[list[ImageInfo]]:
    """Returns the images of each replica's part, each in the order `images` gave them."""
    return _cells(images, part_bounds(len(images), replicas))


def layout_part_shards(images: Sequence[ImageInfo], replica_counts: Iterable[int],
                       max_shard_bytes: int) -> list[list[ShardSpec]]:
    """Returns the job's shards in groups: each group packs one stretch of the images that lies
    within a single part of every collaborative run (`replica_counts`: their replicas).

    With no collaborative run it is one group, `layout_shards(images)` itself.
    """
    counts = sorted(set(replica_counts))
    if not counts:
        return [layout_shards(images, max_shard_bytes)]
    cuts = sorted({bound for n in counts for bound in part_bounds(len(images), n)})
    return [layout_shards(cell, max_shard_bytes) for cell in _cells(images, cuts)]


def replica_shards(groups: Sequence[Sequence[ShardSpec]], replicas: int) -> list[list[str]]:
    """Returns the ids of each replica's shards (replica order, then shard order) for a run of
    `replicas` over the shards of `layout_part_shards`."""
    shards = [spec for group in groups for spec in group]
    order = by_content(member.image for spec in shards for member in spec.members)
    bounds = part_bounds(len(order), replicas)
    rank = {image.sha256: i for i, image in enumerate(order)}
    parts: list[list[str]] = [[] for _ in range(replicas)]
    for spec in shards:
        found = {_part_of(rank[m.image.sha256], bounds) for m in spec.members}
        if len(found) != 1:  # layout_part_shards cuts at every run's bounds: a bug if not
            raise RuntimeError(f"{spec.id} holds images of parts {sorted(found)}")
        parts[found.pop()].append(spec.id)
    return parts


def _part_of(rank: int, bounds: list[int]) -> int:
    for i, end in enumerate(bounds[1:]):
        if rank < end:
            return i
    raise ValueError(f"rank {rank} is past the last part")


def _cells(images: Sequence[ImageInfo], cuts: list[int]) -> list[list[ImageInfo]]:
    """Returns the images of each stretch [cuts[k], cuts[k+1]) of the content order, each in the
    order `images` gave them (the scan's, by path: as layout_shards packs a whole dataset)."""
    position = {image.sha256: i for i, image in enumerate(images)}
    order = by_content(images)
    return [sorted(order[a:b], key=lambda image: position[image.sha256]) for a, b in zip(cuts, cuts[1:])]


# -- a collaborative run against the data ---------------------------------------------------------

# A round waits at least this long (minutes of store time) for its replicas, by default.
MIN_ROUND_TIMEOUT_MINUTES = 30


def replica_problems(runs: Sequence[RunConfig], images: int) -> dict[int, str]:
    """Returns, by the run's position, one line for each collaborative run with more replicas
    than the data has parts: a part needs one training image at least."""
    problems = {}
    for i, run in enumerate(runs):
        collab = run.collaborative
        if collab is not None and collab.replicas > images:
            problems[i] = (f"runs[{i}].replicas = {collab.replicas}: run {run.name!r} cannot be split into "
                            f"{collab.replicas} parts: the data has {images} training image"
                            f"{'s' if images != 1 else ''} after the validation images are held out, and each "
                            f"replica needs one of its own at least; at most {images}")
    return problems


def round_problems(runs: Sequence[RunPlan | None], images: int) -> dict[int, str]:
    """Returns one line for each collaborative run whose round (sync_every) is longer than the
    inner steps each replica trains (so it would have no whole round), by the run's position;
    `runs` in the job file's order, None for a run not planned (one replica_problems refused)."""
    problems = {}
    for i, r in enumerate(runs):
        collab = r.run.collaborative if r is not None else None
        if collab is not None and collab.sync_every > r.steps_total:
            part = min(part_sizes(images, collab.replicas))
            problems[i] = (f"runs[{i}].sync_every = {collab.sync_every}: longer than run {r.run.name!r}'s "
                            f"{r.steps_total} inner steps per replica ({r.run.epochs} epoch"
                            f"{'s' if r.run.epochs != 1 else ''} of {r.steps_per_epoch} steps over a part of {part} "
                            f"images); at most {r.steps_total}, or raise epochs")
    return problems


def round_timeout_minutes(r: RunPlan, lease_seconds: float) -> float:
    """Returns how long a round waits for its replicas' changes, in minutes of store time: the
    job file's `round_timeout`, else twice a round's training time plus a lease, at least
    MIN_ROUND_TIMEOUT_MINUTES (a replica that lost its session has a lease's time to be given
    to another worker, who then trains the round again)."""
    collab = r.run.collaborative
    if collab.round_timeout is not None:
        return collab.round_timeout
    seconds = 2 * min(collab.sync_every, r.steps_total) * r.step_seconds + lease_seconds
    return float(max(MIN_ROUND_TIMEOUT_MINUTES, math.ceil(seconds / 60)))


def collaborative_record(r: RunPlan, groups: Sequence[Sequence[ShardSpec]], placement: dict[str, str],
                         lease_seconds: float) -> dict:
    """Returns what the plan records of a collaborative run: its settings as the rounds use
    them, and each replica's part (its images, bytes, shards and the accounts holding them), so
    a replica's worker downloads only its own shards."""
    collab = r.run.collaborative
    sizes = {spec.id: spec for group in groups for spec in group}
    parts = []
    for replica, shard_ids in enumerate(replica_shards(groups, collab.replicas)):
        accounts = []
        for shard in shard_ids:
            if placement[shard] not in accounts:
                accounts.append(placement[shard])
        parts.append({"replica": replica, "images": sum(len(sizes[s].members) for s in shard_ids),
                      "bytes": sum(sizes[s].size for s in shard_ids), "shards": shard_ids, "accounts": accounts})
    return {"replicas": collab.replicas, "sync_every": collab.sync_every, "rounds": r.rounds,
            "steps_per_replica": r.steps_total, "outer_lr": collab.outer_lr,
            "outer_momentum": collab.outer_momentum, "min_replicas": collab.required_replicas,
            "round_timeout_minutes": round_timeout_minutes(r, lease_seconds), "parts": parts}

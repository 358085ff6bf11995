"""Pure: a collaborative run's images split into fixed disjoint parts, shards that never mix two
parts, each part's shards on as few accounts as possible, and the estimate of its replicas."""

from __future__ import annotations

import dataclasses
import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardrun.config.job import CollaborativeConfig, RunConfig
from shardrun.config.platforms import load_platforms
from shardrun.errors import PlanError
from shardrun.plan.dataset import ImageInfo
from shardrun.plan.parts import (
    layout_part_shards,
    part_sizes,
    replica_problems,
    replica_shards,
    round_problems,
    split_parts,
)
from shardrun.plan.placement import AccountSpace, ShardToPlace, estimate, place_groups, plan_run
from shardrun.plan.shards import RECORD, layout_shards

PLATFORMS = load_platforms()


def images(count: int, size: int = 3000, seed: int = 0) -> list[ImageInfo]:
    """Returns `count` images as the scan gives them: sorted by path, each its own sha256."""
    rng = random.Random(seed)
    found = []
    for i in range(count):
        sha = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
        found.append(ImageInfo(f"img{i:05d}.png", f"/data/img{i:05d}.png", size + rng.randrange(2000), sha,
                               64, 64, 3, "PNG"))
    return found


def collaborative(replicas: int, sync_every: int = 10, **changes) -> RunConfig:
    values = dict(name="c", model="espcn", scale=2, channels=1, epochs=4, batch_size=4, patch_size=16,
                  patches_per_second=100.0, collaborative=CollaborativeConfig(replicas, sync_every))
    values.update(changes)
    return RunConfig(**values)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.integers(1, 12))
def test_parts_are_disjoint_cover_every_image_and_differ_by_one_image_at_most(count, replicas):
    if replicas > count:
        with pytest.raises(ValueError):
            split_parts(images(count), replicas)
        return
    given_images = images(count)
    parts = split_parts(given_images, replicas)
    assert [len(p) for p in parts] == part_sizes(count, replicas)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    members = [image.sha256 for part in parts for image in part]
    assert sorted(members) == sorted(i.sha256 for i in given_images) and len(set(members)) == count
    # Cut from the content order: every image of part i hashes below every image of part i + 1.
    for left, right in zip(parts, parts[1:]):
        assert max(i.sha256 for i in left) < min(i.sha256 for i in right)


def test_parts_depend_on_the_images_contents_not_their_order_or_names():
    given_images = images(50)
    parts = [{i.sha256 for i in p} for p in split_parts(given_images, 4)]
    shuffled = given_images[:]
    random.Random(3).shuffle(shuffled)
    renamed = [ImageInfo("other/" + i.path, i.source, i.size, i.sha256, i.width, i.height, i.channels, i.format)
               for i in shuffled]
    assert [{i.sha256 for i in p} for p in split_parts(renamed, 4)] == parts
    # Within a part, the scan's order (by path), as a whole dataset is packed.
    for part in split_parts(given_images, 4):
        assert [i.path for i in part] == sorted(i.path for i in part)


def test_a_job_without_collaborative_runs_is_laid_out_exactly_as_before():
    given_images = images(80)
    assert layout_part_shards(given_images, [], 20 * RECORD) == [layout_shards(given_images, 20 * RECORD)]


@settings(max_examples=40, deadline=None)
@given(st.integers(6, 120), st.lists(st.integers(1, 6), min_size=1, max_size=3), st.integers(2, 40))
def test_no_shard_mixes_two_parts_of_any_run(count, replica_counts, records):
    given_images = images(count, seed=count)
    groups = layout_part_shards(given_images, replica_counts, records * RECORD)
    shards = [spec for group in groups for spec in group]
    assert sorted(m.image.sha256 for s in shards for m in s.members) == sorted(i.sha256 for i in given_images)
    for replicas in replica_counts:
        parts = [{i.sha256 for i in p} for p in split_parts(given_images, replicas)]
        by_replica = replica_shards(groups, replicas)
        assert sorted(s for ids in by_replica for s in ids) == sorted(s.id for s in shards)  # each once
        for replica, ids in enumerate(by_replica):
            held = {m.image.sha256 for s in shards if s.id in ids for m in s.members}
            assert held == parts[replica]  # the part's shards hold the part, whole, and nothing else


def test_each_part_goes_whole_to_one_account_when_one_has_room_and_parts_spread():
    groups = [[ShardToPlace(f"p{p}s{i}", 100) for i in range(3)] for p in range(4)]
    accounts = [AccountSpace("a", 1000, 0, 0), AccountSpace("b", 1000, 0, 0), AccountSpace("c", 1000, 0, 0)]
    placement = place_groups(groups, accounts)
    for group in groups:
        assert len({placement[s.id] for s in group}) == 1
    assert {placement[g[0].id] for g in groups} == {"a", "b", "c"}  # the team shares the parts


def test_a_part_larger_than_any_account_spans_the_fewest_accounts():
    group = [ShardToPlace(f"s{i}", 100) for i in range(9)]  # 900 bytes
    accounts = [AccountSpace("a", 300, 0, 0), AccountSpace("b", 700, 0, 0), AccountSpace("c", 400, 0, 0)]
    placement = place_groups([group], accounts)
    # The largest room first, then the next largest: two accounts, where three would also hold it.
    assert [placement[s.id] for s in group] == ["b"] * 7 + ["c"] * 2


def test_shards_already_on_an_account_stay_and_a_team_too_small_is_refused():
    group = [ShardToPlace(f"s{i}", 100) for i in range(3)]
    accounts = [AccountSpace("a", 1000, 0, 0), AccountSpace("b", 1000, 0, 0)]
    placement = place_groups([group], accounts, {"s1": "b"})
    assert placement == {"s0": "b", "s1": "b", "s2": "b"}  # the rest of the part joins the one kept
    with pytest.raises(PlanError, match="too small for the dataset"):
        place_groups([group], [AccountSpace("a", 150, 0, 0)])


def test_a_collaborative_runs_steps_are_each_replicas_over_the_smallest_part():
    r = plan_run(collaborative(3), 61, None, PLATFORMS["colab-free"])  # parts of 21, 20, 20 images
    assert r.steps_per_epoch == 20 * 16 // 4 and r.steps_total == 4 * 80 and r.replicas == 3
    assert r.rounds == 32  # 320 steps, 10 a round
    assert plan_run(collaborative(3, sync_every=300), 61, None, PLATFORMS["colab-free"]).rounds == 2


def test_the_estimate_trains_the_replicas_side_by_side():
    platform = PLATFORMS["colab-free"]
    plain = plan_run(dataclasses.replace(collaborative(3), collaborative=None), 60, None, platform)
    together = plan_run(collaborative(3), 60, None, platform)
    assert together.train_seconds == pytest.approx(plain.train_seconds / 3)  # a third of the data each
    est = estimate([together], platform, workers=3)
    assert est.gpu_hours == pytest.approx(3 * together.train_seconds / 3600)
    assert est.sessions == 3 * len(together.chunks)
    one_chain = dataclasses.replace(together, run=dataclasses.replace(together.run, collaborative=None))
    # Three workers train the three replicas at once: as long as one replica's chain alone...
    assert est.calendar_hours == pytest.approx(estimate([one_chain], platform, 1).calendar_hours)
    # ... and one worker trains them one after another.
    assert estimate([together], platform, 1).calendar_hours == pytest.approx(
        3 * estimate([one_chain], platform, 1).calendar_hours)


def test_more_replicas_than_images_and_rounds_longer_than_the_run_are_named():
    runs = [collaborative(5, name="many"), collaborative(2, sync_every=10_000, name="long"),
            collaborative(1, name="fine")]
    assert replica_problems(runs, 4) == {0: (
        "runs[0].replicas = 5: run 'many' cannot be split into 5 parts: the data has 4 training images after the "
        "validation images are held out, and each replica needs one of its own at least; at most 4")}
    planned = [None] + [plan_run(r, 4, None, PLATFORMS["colab-free"]) for r in runs[1:]]
    assert round_problems(planned, 4) == {1: (
        "runs[1].sync_every = 10000: longer than run 'long''s 32 inner steps per replica (4 epochs of 8 steps "
        "over a part of 2 images); at most 32, or raise epochs")}

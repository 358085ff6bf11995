"""Pure planning: placement within quotas, chunks that fit a session, estimates, platforms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardrun.config.job import GB, MB, RunConfig
from shardrun.errors import PlanError
from shardrun.plan.placement import AccountSpace, ShardToPlace, cut_chunks, estimate, place_shards, plan_run
from shardrun.config.platforms import ModelThroughput, Profile, load_platforms

PLATFORMS = load_platforms()


def run_config(**changes) -> RunConfig:
    values = dict(name="r", model="decusr", scale=2, channels=1, epochs=4, batch_size=64, patch_size=32)
    values.update(changes)
    return RunConfig(**values)


def test_platforms_file_has_the_required_platforms_with_sources():
    assert {"colab-free", "colab-pro", "kaggle", "local"} <= set(PLATFORMS)
    assert PLATFORMS["colab-free"].session_hours == 12
    assert PLATFORMS["local"].usable_seconds is None
    for platform in PLATFORMS.values():
        assert platform.source, platform.name
    # 12 h session: min(0.8 * 12 h, 12 h - 20 min) - 10 min of start-up
    assert PLATFORMS["colab-free"].usable_seconds == pytest.approx(0.8 * 12 * 3600 - 600)


def test_placement_spreads_shards_and_keeps_the_reserve():
    accounts = [AccountSpace("a", 1000, 0, 100), AccountSpace("b", 1000, 300, 100)]
    shards = [ShardToPlace(f"s{i}", 200) for i in range(6)]
    placement = place_shards(shards, accounts)
    per_account = {name: sum(200 for s in placement.values() if s == name) for name in ("a", "b")}
    assert per_account == {"a": 800, "b": 400}  # exactly quota - reserve - used on each
    assert [placement[f"s{i}"] for i in range(3)] == ["a", "a", "b"]  # most free first: spread


def test_placement_keeps_existing_shards_where_they_are():
    accounts = [AccountSpace("a", 1000, 200, 0), AccountSpace("b", 1000, 0, 0)]
    shards = [ShardToPlace("s0", 200), ShardToPlace("s1", 200)]
    assert place_shards(shards, accounts, existing={"s0": "a"}) == {"s0": "a", "s1": "b"}


def test_too_little_space_says_how_many_bytes_and_accounts_are_missing():
    accounts = [AccountSpace("a", 15 * GB, 0, 0), AccountSpace("b", 15 * GB, 0, 0)]
    shards = [ShardToPlace(f"s{i}", 4 * GB) for i in range(9)]  # 36 GB into 30 GB
    with pytest.raises(PlanError) as info:
        place_shards(shards, accounts)
    message = str(info.value)
    assert "6,000,000,000 more bytes needed" in message
    assert "about 1 more account of 15 GB" in message
    assert "Nothing was written" in message


def test_a_quota_smaller_than_one_shard_is_refused():
    with pytest.raises(PlanError, match="more bytes needed"):
        place_shards([ShardToPlace("s", 5000)], [AccountSpace("tiny", 1000, 0, 0)])



def shortfall(shards: list[ShardToPlace], accounts: list[AccountSpace]) -> str:
    with pytest.raises(PlanError) as info:
        place_shards(shards, accounts)
    return str(info.value)


def test_a_reserve_as_large_as_the_quota_says_it_leaves_nothing_for_shards():
    # 512 MB kept back on 0.05 GB accounts: not "about 419840 more accounts of 0.05 GB".
    message = shortfall([ShardToPlace("s0", 100 * MB)],
                        [AccountSpace("alice", 50 * MB, 0, 512 * MB), AccountSpace("bob", 50 * MB, 0, 512 * MB)])
    assert "reserve (reserve_mb = 512) is as large as the quota of accounts alice, bob" in message
    assert "leaves nothing there for shards" in message
    assert "Lower reserve_mb below 50 or raise quota_gb above 0.512" in message
    assert "more account" not in message and "Nothing was written" in message


def test_an_account_the_reserve_fills_is_named_and_left_out_of_the_estimate():
    accounts = [AccountSpace("a", 15 * GB, 0, 0), AccountSpace("b", 15 * GB, 0, 0),
                AccountSpace("tiny", 1 * GB, 0, 2 * GB)]
    message = shortfall([ShardToPlace(f"s{i}", 4 * GB) for i in range(9)], accounts)
    assert "about 1 more account of 15 GB" in message
    assert "quota of account tiny" in message and "leaves nothing there for shards" in message


def test_shards_larger_than_every_account_s_free_space_say_which_shard_size_fits():
    # 200 MB free on each of three accounts: room for 512 MB in all, but not for one 256 MB shard.
    accounts = [AccountSpace(name, GB, 300 * MB, 500 * MB) for name in ("a", "b", "c")]
    message = shortfall([ShardToPlace(f"s{i}", 256 * MB) for i in range(2)], accounts)
    assert "The team has 600.00 MB free for 512.00 MB of shards" in message
    assert "fits in no account: the most any account has free is 200.00 MB (account a)" in message
    assert "Set shard_size_mb = 200 (or less)" in message
    assert "more bytes needed" not in message and "Nothing was written" in message


def test_free_space_left_in_pieces_smaller_than_a_shard_asks_for_smaller_shards():
    # 400 MB free on each of two accounts: one 256 MB shard each, then 144 MB left on each.
    accounts = [AccountSpace(name, GB, 600 * MB, 0) for name in ("a", "b")]
    message = shortfall([ShardToPlace(f"s{i}", 256 * MB) for i in range(3)], accounts)
    assert "fits in no account once the others are placed: at most 144.00 MB is left" in message
    assert "Set a smaller shard_size_mb (below 256)" in message
    assert "more bytes needed" not in message


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 20_000), step_seconds=st.floats(0.001, 100), usable=st.floats(1, 50_000))
def test_chunks_cover_every_step_once_and_fit_the_session(total, step_seconds, usable):
    chunks = cut_chunks(total, step_seconds, usable)
    assert chunks[0][0] == 0 and chunks[-1][1] == total
    for (s0, e0), (s1, _) in zip(chunks, chunks[1:]):
        assert e0 == s1
    for start, end in chunks:
        assert end > start
        assert (end - start) * step_seconds <= usable or end - start == 1


def test_run_plan_uses_profile_scaled_by_patch_area_and_override():
    profile = Profile("p", "GPU", "test", {"decusr": ModelThroughput(1000.0, 32)})
    plan = plan_run(run_config(patch_size=64), 1000, profile, PLATFORMS["colab-free"])
    assert plan.patches_per_second == pytest.approx(250.0)  # 4x the area: a quarter of the patches/s
    assert plan.steps_per_epoch == 1000 * 16 // 64 and plan.steps_total == 4 * 250
    override = plan_run(run_config(patches_per_second=10.0), 1000, profile, PLATFORMS["colab-free"])
    assert override.patches_per_second == 10.0 and "patches_per_second" in override.throughput_source
    with pytest.raises(PlanError, match="has no figure for model 'espcn'.*shardrun bench --model espcn"):
        plan_run(run_config(model="espcn"), 1000, profile, PLATFORMS["colab-free"])


def test_long_runs_are_cut_into_session_sized_chunks():
    # 20 h of training on a 12 h platform: usable 9.43 h per session -> 3 chunks.
    run = run_config(patches_per_second=64.0, epochs=1, batch_size=64, patches_per_image=72)
    plan = plan_run(run, 1000, None, PLATFORMS["colab-free"])
    assert plan.step_seconds == 1.0 and plan.steps_total == 1125
    local = plan_run(run, 1000, None, PLATFORMS["local"])
    assert local.chunks == ((0, 1125),)
    big = plan_run(run_config(patches_per_second=64.0, epochs=64, patches_per_image=72), 1000, None,
                   PLATFORMS["colab-free"])
    assert len(big.chunks) == 3  # 72,000 s of training in chunks of 33,960 s


def test_estimate_runs_chains_in_parallel_but_chunks_of_a_run_in_sequence():
    platform = PLATFORMS["colab-free"]
    run = run_config(patches_per_second=64.0, epochs=64, patches_per_image=72)
    a = plan_run(run, 1000, None, platform)
    b = plan_run(run_config(name="r2", patches_per_second=64.0, epochs=64, patches_per_image=72), 1000, None, platform)
    one = estimate([a, b], platform, workers=1)
    two = estimate([a, b], platform, workers=2)
    four = estimate([a, b], platform, workers=4)
    startup = platform.startup_minutes / 60
    assert one.gpu_hours == pytest.approx(2 * 72_000 / 3600)
    assert one.sessions == 6
    assert one.calendar_hours == pytest.approx(one.gpu_hours + 6 * startup)
    assert two.calendar_hours == pytest.approx(one.calendar_hours / 2)
    assert four.calendar_hours == two.calendar_hours  # a chain cannot go faster than one worker

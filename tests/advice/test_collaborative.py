"""`advise` for collaborative runs: every replica's GPU-hours, and a calendar counted with the
team's workers (replicas side by side with a worker each; turns a round with fewer). Expected
values are worked out here from the profile's throughput and the platform's figures."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from rich.console import Console

from shardrun.advice.roadmap import AdviceInput, advise
from shardrun.config.job import GB, CollaborativeConfig, RunConfig
from shardrun.config.platforms import load_platforms, load_profile
from shardrun.config.prices import load_prices
from shardrun.render.advice import advice_view

PRICES = load_prices()
PLATFORMS = load_platforms()
FREE = PLATFORMS["colab-free"]
LOCAL = PLATFORMS["local"]
T4 = load_profile("colab-t4")
IMAGES = 50_000
BATCH, PATCHES = 64, 16


def run(replicas: int | None = 4, epochs: int = 100, **collab) -> RunConfig:
    together = None if replicas is None else CollaborativeConfig(replicas=replicas, sync_every=5000, **collab)
    return RunConfig(name="together" if together else "alone", model="decusr", scale=2, channels=1, epochs=epochs,
                     batch_size=BATCH, patch_size=32, patches_per_image=PATCHES, collaborative=together)


def advice_input(runs, workers: int, images: int = IMAGES) -> AdviceInput:
    return AdviceInput("job", tuple(runs), images, 5 * GB, 4, 0, workers, T4, FREE, T4, LOCAL, None, 600.0)


# One replica: a quarter of the images, 16 patches each in batches of 64, 100 epochs.
STEP_S = BATCH / T4.models["decusr"].at_patch_size(32)
STEPS = math.ceil(IMAGES // 4 * PATCHES / BATCH) * 100
REPLICA_S = STEPS * STEP_S  # one chunk: it fits a session's usable time
STARTUP_S = FREE.startup_minutes * 60


def test_the_figures_worked_out_here_hold():
    assert STEPS == 312_500 and REPLICA_S == pytest.approx(8000.0) and REPLICA_S < FREE.usable_seconds


def test_the_work_counts_every_replicas_training():
    advice = advise(advice_input([run()], workers=4), PRICES)
    assert advice.work.gpu_hours == pytest.approx(4 * REPLICA_S / 3600)
    assert advice.work.runs[0].gpu_hours == pytest.approx(4 * REPLICA_S / 3600)
    (c,) = advice.collaborative
    assert (c.name, c.replicas, c.min_replicas, c.rounds, c.sync_every) == ("together", 4, 4, 63, 5000)
    assert c.round_hours == pytest.approx(5000 * STEP_S / 3600)
    assert c.gpu_hours == pytest.approx(4 * REPLICA_S / 3600)
    assert c.round_timeout_hours == pytest.approx(0.5)  # twice a round plus a lease is under 30 min


@pytest.mark.parametrize("workers, turns", [(4, 1), (6, 1), (3, 2), (2, 2), (1, 4)])
def test_the_calendar_counts_the_rounds_turns_with_the_teams_workers(workers, turns):
    advice = advise(advice_input([run()], workers=workers), PRICES)
    (c,) = advice.collaborative
    # Each turn of a round trains one replica's round; the replica's one session starts up once a turn.
    assert c.turns_per_round == turns
    assert c.calendar_hours == pytest.approx(turns * (REPLICA_S + STARTUP_S) / 3600)
    assert c.side_by_side_hours == pytest.approx((REPLICA_S + STARTUP_S) / 3600)
    assert advice.free.calendar_hours == pytest.approx(turns * (REPLICA_S + STARTUP_S) / 3600)
    # The same as one plain run on a quarter of the images, a worker at a time.
    alone = advise(advice_input([run(replicas=None)], workers=1, images=IMAGES // 4), PRICES)
    assert advice.free.calendar_hours == pytest.approx(turns * alone.free.calendar_hours)


def test_more_workers_shorten_a_collaborative_runs_calendar_but_not_its_cost():
    one, four = (advise(advice_input([run()], workers=w), PRICES) for w in (1, 4))
    assert [r.cost_usd for r in four.rent] == pytest.approx([r.cost_usd for r in one.rent])
    assert four.free.sessions == one.free.sessions == 4
    for a, b in zip(one.rent, four.rent):
        assert a.calendar_hours == pytest.approx(4 * b.calendar_hours, rel=1e-3)
    # a bought card is one GPU: the replicas one after another, whatever the team
    assert [b.calendar_hours for b in four.buy] == pytest.approx([b.calendar_hours for b in one.buy])
    assert four.buy[0].calendar_hours == pytest.approx(four.buy[0].hours)


def test_a_round_that_may_close_without_every_replica_waits_for_its_timeout_at_most():
    # Two workers, two changes a round needed, a timeout of one minute (a round trains 128 s):
    # each round closes as soon as its first two replicas are in; the others are dropped.
    quick = advise(advice_input([run(min_replicas=2, round_timeout=1.0)], workers=2), PRICES)
    (c,) = quick.collaborative
    assert c.calendar_hours == pytest.approx((REPLICA_S + 2 * STARTUP_S) / 3600)
    # A timeout of an hour outlasts two turns of a round: every replica is waited for.
    patient = advise(advice_input([run(min_replicas=2, round_timeout=60.0)], workers=2), PRICES)
    assert patient.collaborative[0].calendar_hours == pytest.approx(2 * (REPLICA_S + STARTUP_S) / 3600)


def test_a_plain_job_is_advised_as_before():
    plain = advise(advice_input([run(replicas=None)], workers=1), PRICES)
    assert plain.collaborative == [] and "collaborative" in plain.to_json()
    assert plain.free.calendar_hours == pytest.approx((4 * REPLICA_S + STARTUP_S) / 3600, rel=1e-3)


def test_the_advice_shows_the_rounds_turns():
    console = Console(width=300, record=True)
    console.print(advice_view(advise(advice_input([run()], workers=2), PRICES)))
    text = console.export_text()
    assert ("Collaborative run together: 4 replicas train at once, 63 rounds of 5,000 steps (2 min a round on T4), "
            "8.89 GPU-hours for all replicas; 2 turns a round, 4 replicas on 2 workers: 4.8 h (2.4 h with 4 "
            "workers).") in text
    data = advise(advice_input([run()], workers=2), PRICES).to_json()
    assert data["collaborative"][0]["turns_per_round"] == 2 and data["collaborative"][0]["workers"] == 2


def test_the_job_file_lease_sets_the_default_round_timeout():
    inp = replace(advice_input([run(min_replicas=2)], workers=2), lease_seconds=3 * 3600.0)
    (c,) = advise(inp, PRICES).collaborative
    assert c.round_timeout_hours == pytest.approx(math.ceil((2 * 5000 * STEP_S + 3 * 3600) / 60) / 60)

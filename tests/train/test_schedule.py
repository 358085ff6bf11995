"""Learning-rate schedules: pure functions of the global step, the same in TensorFlow and in
Python, and refused where they do not fit the run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shardrun.train.optim import keras_schedule
from shardrun.train.schedule import LrSchedule, ScheduleError, lr_schedule


def test_constant_is_the_base_rate_everywhere():
    s = lr_schedule(1e-3, None, 10, 100)
    assert [s.at(k) for k in (0, 50, 99)] == [1e-3] * 3
    assert lr_schedule(1e-3, {"kind": "constant"}, 10, 100) == s


def test_step_milestones_in_epochs_and_in_steps():
    by_epoch = lr_schedule(0.1, {"kind": "step", "milestones": [2, 5], "factor": 0.5}, 10, 100)
    assert by_epoch.milestones == (20, 50)
    assert [by_epoch.at(k) for k in (0, 19, 20, 49, 50, 99)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    by_step = lr_schedule(0.1, {"kind": "step", "milestones": [3], "milestones_in": "steps",
                                "factor": 0.1}, 10, 100)
    assert [by_step.at(k) for k in (2, 3)] == [0.1, 0.1 * 0.1]


def test_cosine_with_linear_warm_up():
    s = lr_schedule(1e-3, {"kind": "cosine", "warmup_steps": 4, "min_lr": 1e-5}, 10, 104)
    assert [s.at(k) for k in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert s.at(4) == pytest.approx(1e-3)  # the cosine starts at the base rate after the warm-up
    s2 = lr_schedule(1e-3, {"kind": "cosine", "warmup_steps": 4, "min_lr": 1e-5}, 10, 105)
    assert s2.at(54) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)  # half way
    assert s.at(103) == pytest.approx(1e-5)  # min_lr at the last step
    assert all(s.at(k) > s.at(k + 1) for k in range(4, 103))  # decreasing after the warm-up
    epochs = lr_schedule(1e-3, {"kind": "cosine", "warmup_epochs": 2}, 10, 100)
    assert epochs.warmup == 20


@pytest.mark.parametrize("kind, settings", [
    ("step", {"milestones": [2, 7], "factor": 0.3, "warmup_steps": 5}),
    ("step", {"milestones": [11, 40], "milestones_in": "steps"}),
    ("cosine", {"warmup_steps": 7, "min_lr": 1e-4}),
    ("cosine", {}),
])
def test_tensorflow_computes_the_same_rate_as_the_pure_function(kind, settings):
    import tensorflow as tf

    s = lr_schedule(2e-3, {"kind": kind, **settings}, 10, 100)
    tf_schedule = keras_schedule(s)
    steps = np.arange(100)
    computed = np.array([float(tf_schedule(tf.constant(k, tf.int64))) for k in steps])
    expected = np.array([s.at(int(k)) for k in steps], np.float32)
    np.testing.assert_allclose(computed, expected, rtol=2e-7, atol=0)


def test_a_schedule_that_does_not_fit_the_run_names_each_problem():
    with pytest.raises(ScheduleError) as caught:
        lr_schedule(1e-3, {"kind": "step", "milestones": [3, 12], "warmup_epochs": 10}, 10, 100)
    problems = caught.value.problems
    assert len(problems) == 2
    assert "schedule.milestones = [3, 12]: 12 is past the run's end" in problems[0]
    assert "must be less than 10" in problems[0]
    assert problems[1].startswith("schedule.warmup_epochs = 10: a warm-up of 100 steps")
    with pytest.raises(ScheduleError, match=r"schedule.warmup_steps = 100: .*less than the run's 100 steps"):
        lr_schedule(1e-3, {"kind": "cosine", "warmup_steps": 100}, 10, 100)
    with pytest.raises(ScheduleError, match=r"schedule.min_lr = 0.01: must be less than learning_rate"):
        lr_schedule(1e-3, {"kind": "cosine", "min_lr": 0.01}, 10, 100)
    with pytest.raises(ScheduleError, match=r"schedule.kind = 'linear': must be one of 'constant', 'step', 'cosine'"):
        lr_schedule(1e-3, {"kind": "linear"}, 10, 100)


def test_settings_record_every_step_resolved():
    s = lr_schedule(0.1, {"kind": "step", "milestones": [1]}, 10, 30)
    assert s.settings() == {"kind": "step", "base": 0.1, "total_steps": 30, "milestones": [10],
                            "factor": 0.5, "warmup": 0, "min_lr": 0.0}
    assert LrSchedule(**{k: (tuple(v) if k == "milestones" else v) for k, v in s.settings().items()}) == s
    assert math.isclose(s.at(10), 0.05)

"""The trainer: exact resume, deadlines on an injected clock, checkpoint files and fallbacks."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from shardrun.clock import FakeClock
from shardrun.train.data import DataError, MemoryImageSource
from shardrun.train.models import ModelError
from shardrun.train.trainer import (
    CheckpointError,
    CheckpointMismatchError,
    TrainConfig,
    Trainer,
    TrainingError,
    file_sha256,
    read_checkpoint,
)

TINY = dict(model="espcn", scale=2, channels=1, options={"n1": 6, "n2": 6}, patch_size=16,
            batch_size=6, patches_per_image=4, images_per_window=2, seed=3)


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(5):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (34, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    return MemoryImageSource(blobs)


def weights_of(trainer):
    return [w.numpy().copy() for w in trainer.model.weights]


def max_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def test_training_interrupted_at_random_steps_ends_with_identical_weights(source, tmp_path):
    tf.config.experimental.enable_op_determinism()
    config = TrainConfig(**TINY, epochs=3)
    straight = Trainer(config, source, tmp_path / "straight")
    total = straight.total_steps
    assert total == 3 * 4  # ceil(5 images * 4 patches / 6) = 4 steps per epoch
    straight.train()
    cuts = sorted(np.random.default_rng(42).choice(np.arange(1, total), 3, replace=False).tolist())
    checkpoint = None
    for end in cuts + [total]:
        trainer = Trainer(config, source, tmp_path / "sliced")  # a fresh model object each time
        if checkpoint is not None:
            assert trainer.restore([checkpoint.path]).step == checkpoint.step
        # Grouping steps into compiled calls changes nothing either.
        checkpoint = trainer.train(end, steps_per_call=1 + end % 3).checkpoint
        assert checkpoint.step == end
    assert max_difference(weights_of(straight), weights_of(trainer)) == 0.0

    # The comparison can fail: restoring the weights but not the optimiser's state diverges.
    partial = Trainer(config, source, tmp_path / "partial")
    first = Trainer(config, source, tmp_path / "first")
    first.train(cuts[0])
    for variable, value in zip(partial.model.weights, weights_of(first)):
        variable.assign(value)
    partial.step = cuts[0]
    partial.train()
    assert max_difference(weights_of(straight), weights_of(partial)) > 0


def test_checkpoints_every_n_steps_are_single_verified_files(source, tmp_path):
    trainer = Trainer(TrainConfig(**TINY, epochs=2), source, tmp_path, keep=2)
    seen = []
    result = trainer.train(7, checkpoint_every_steps=3, on_checkpoint=seen.append)
    assert [(c.step, c.reason, c.final) for c in seen] == [(3, "steps", False), (6, "steps", False),
                                                          (7, "target", True)]
    assert result.reason == "target" and result.step == 7 and result.steps_done == 7
    assert result.checkpoint == seen[-1] and np.isfinite(result.loss)
    # The previous file stays as a fallback; older ones and temporary files are gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == [seen[1].path.name, seen[2].path.name]
    last = seen[-1]
    assert last.sha256 == file_sha256(last.path) and last.size == last.path.stat().st_size
    meta, weights, slots = read_checkpoint(last.path)
    assert meta["step"] == 7
    assert meta["model"] == {"name": "espcn", "scale": 2, "channels": 1,
                             "options": {"n1": 6, "n2": 6}}
    assert meta["rng"] == {"seed": 3, "samples_seen": 7 * 6}
    assert int(slots[0]) == 7  # the optimiser's iteration count travels with it
    assert max_difference(weights, weights_of(trainer)) == 0.0


def test_deadline_stops_in_time_and_leaves_a_final_checkpoint(source, tmp_path):
    clock = FakeClock()
    trainer = Trainer(TrainConfig(**TINY, epochs=3), source, tmp_path, clock=clock)
    beats = []

    def heartbeat(progress):
        beats.append(progress)
        clock.advance(60)  # each step "takes" a minute

    deadline = clock.now() + 10 * 60 + 30
    result = trainer.train(deadline=deadline, reserve_s=30, heartbeat_every_s=0,
                           on_heartbeat=heartbeat)
    assert result.reason == "deadline" and result.step == 10 < trainer.total_steps
    assert result.checkpoint.reason == "deadline" and result.checkpoint.step == 10
    assert clock.now() + 30 <= deadline  # it stopped with the reserve still ahead
    assert [b.step for b in beats] == list(range(1, 11))
    assert all(b.loss is not None and b.loss > 0 for b in beats)

    # A later slice resumes from that checkpoint and finishes the run.
    later = Trainer(TrainConfig(**TINY, epochs=3), source, tmp_path / "later", clock=FakeClock())
    later.restore([result.checkpoint.path])
    finished = later.train()
    assert finished.reason == "target" and finished.step == trainer.total_steps
    assert finished.steps_done == trainer.total_steps - 10


def test_a_deadline_already_too_near_trains_nothing_and_writes_nothing(source, tmp_path):
    clock = FakeClock()
    trainer = Trainer(TrainConfig(**TINY), source, tmp_path, clock=clock)
    result = trainer.train(deadline=clock.now() + 20, reserve_s=30)
    assert result.reason == "deadline" and result.steps_done == 0 and result.checkpoint is None
    assert not list(tmp_path.glob("*"))


def test_time_based_checkpoints_and_stop_requests(source, tmp_path):
    clock = FakeClock()
    trainer = Trainer(TrainConfig(**TINY, epochs=3), source, tmp_path, clock=clock)
    saved = []

    def heartbeat(progress):
        clock.advance(100)
        if progress.step == stop_at:
            trainer.request_stop()

    stop_at = 5
    result = trainer.train(checkpoint_every_s=250, heartbeat_every_s=0, on_heartbeat=heartbeat,
                           on_checkpoint=saved.append)
    # The clock reads 100 s per step: the checkpoint falls due when 250 s have passed.
    assert [(c.step, c.reason, c.final) for c in saved] == [(4, "time", False), (5, "stopped", True)]
    assert result.reason == "stopped" and result.step == 5
    # Stopped right at a periodic checkpoint: that file is reported once more, as the final one.
    saved.clear()
    stop_at = 9
    result = trainer.train(checkpoint_every_s=250, heartbeat_every_s=0, on_heartbeat=heartbeat,
                           on_checkpoint=saved.append)
    assert [(c.step, c.reason, c.final) for c in saved] == [(9, "time", False), (9, "time", True)]
    assert saved[0].path == saved[1].path and result.checkpoint == saved[1]
    # A stop asked for before the call (a signal between chunks) is honoured at once, once.
    trainer.request_stop()
    result = trainer.train()
    assert result.reason == "stopped" and result.steps_done == 0 and result.checkpoint is None
    assert trainer.train(10).reason == "target"


def test_newest_unreadable_checkpoint_falls_back_to_the_previous_one(source, tmp_path, caplog):
    trainer = Trainer(TrainConfig(**TINY), source, tmp_path)
    seen = []
    trainer.train(4, checkpoint_every_steps=2, on_checkpoint=seen.append)
    older, newest = seen[0].path, seen[1].path
    newest.write_bytes(newest.read_bytes()[:200])  # cut off mid-write
    fresh = Trainer(TrainConfig(**TINY), source, tmp_path / "fresh")
    with caplog.at_level(logging.WARNING, logger="shardrun.train"):
        restored = fresh.restore([newest, older])
    assert restored.path == older and restored.step == 2 and fresh.step == 2
    assert len(restored.notices) == 1 and str(newest) in restored.notices[0]
    assert "falling back" in restored.notices[0] and "falling back" in caplog.text
    older.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"none of the 2 checkpoint\(s\) can be read"):
        Trainer(TrainConfig(**TINY), source, tmp_path / "x").restore([newest, older])
    with pytest.raises(CheckpointError, match="no checkpoint was given"):
        fresh.restore([])


def test_a_checkpoint_of_another_model_is_a_clear_one_line_error(source, tmp_path):
    trainer = Trainer(TrainConfig(**TINY), source, tmp_path)
    path = trainer.save_checkpoint().path
    other = Trainer(TrainConfig(**{**TINY, "options": {"n1": 8, "n2": 6}}), source, tmp_path / "o")
    with pytest.raises(CheckpointMismatchError) as caught:
        other.restore([path])
    message = str(caught.value)
    assert "\n" not in message
    assert "holds espcn (scale 2, 1 channel, n1=6, n2=6)" in message
    assert "this run trains espcn (scale 2, 1 channel, n1=8, n2=6)" in message
    decusr = Trainer(TrainConfig(**{**TINY, "model": "decusr", "options": {"blocks": 1, "filters": 2}}),
                     source, tmp_path / "d")
    with pytest.raises(CheckpointMismatchError, match="this run trains decusr"):
        decusr.restore([path])
    relayout = Trainer(TrainConfig(**{**TINY, "batch_size": 4}), source, tmp_path / "b")
    with pytest.raises(CheckpointMismatchError, match=r"batch_size=6 \(now 4\)"):
        relayout.restore([path])


def test_bad_arguments_are_reported_together(source, tmp_path):
    with pytest.raises(ModelError) as caught:
        Trainer(TrainConfig(model="espcn", scale=2, channels=2, patch_size=6, batch_size=0),
                source, tmp_path)
    message = str(caught.value)
    for part in ("channels=2", "patch_size=6", "batch_size=0"):
        assert part in message
    with pytest.raises(ModelError, match="model='edsr' is not a known model"):
        Trainer(TrainConfig(model="edsr", scale=2), source, tmp_path)
    with pytest.raises(DataError, match="smaller than patch_size=48"):
        Trainer(TrainConfig(**{**TINY, "patch_size": 48}), source, tmp_path)
    trainer = Trainer(TrainConfig(**TINY), source, tmp_path)
    with pytest.raises(TrainingError, match=r"until_step=99 must be between the current step 0"):
        trainer.train(99)


def test_the_xla_compiled_step_trains_like_the_plain_one(source, tmp_path):
    # On a GPU the step is XLA-compiled by default (as Keras's fit does); XLA runs on the CPU too.
    plain = Trainer(TrainConfig(**TINY), source, tmp_path / "plain", jit_compile=False)
    xla = Trainer(TrainConfig(**TINY), source, tmp_path / "xla", jit_compile=True)
    initial = weights_of(xla)
    for trainer in (plain, xla):
        trainer.train(3)
    assert max_difference(weights_of(xla), initial) > 1e-3  # it trained
    assert max_difference(weights_of(plain), weights_of(xla)) < 1e-4  # the same computation


def test_a_runs_plain_settings_make_its_train_config():
    run = {"name": "espcn-x2", "patches_per_second": 120.0, **TINY, "epochs": 3, "learning_rate": 0.002}
    config = TrainConfig.from_run(run)
    assert config == TrainConfig(**TINY, epochs=3, learning_rate=0.002)  # name and throughput are planning's
    assert TrainConfig.from_run({"model": "espcn", "scale": 2}) == TrainConfig(model="espcn", scale=2)
    assert TrainConfig.from_run({**run, "options": None}).options == {}
    with pytest.raises(TrainingError, match="the run's settings lack model, scale"):
        TrainConfig.from_run({"name": "x", "epochs": 2})


SCHEDULED = dict(loss="l1", clip_norm=0.05,
                 schedule={"kind": "step", "milestones": [3, 7], "milestones_in": "steps",
                           "factor": 0.5, "warmup_steps": 2})


def test_interrupted_training_with_a_schedule_clipping_and_l1_stays_bit_identical(source, tmp_path):
    tf.config.experimental.enable_op_determinism()
    config = TrainConfig(**TINY, epochs=3, **SCHEDULED)
    straight = Trainer(config, source, tmp_path / "straight")
    rates = []
    for step in range(straight.total_steps):
        rates.append(float(straight.optimizer.learning_rate))
        straight.train(step + 1, checkpoint_at_end=False)
    assert rates[:4] == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])  # warm-up, then the first milestone
    assert len(set(rates)) >= 3
    checkpoint = None
    for end in (2, 5, 8, straight.total_steps):  # cut inside the warm-up and around each milestone
        trainer = Trainer(config, source, tmp_path / "sliced")
        if checkpoint is not None:
            trainer.restore([checkpoint.path])
            # The resumed trainer's rate at its step is the one training straight through used.
            assert float(trainer.optimizer.learning_rate) == rates[trainer.step]
            assert trainer.learning_rate_at() == pytest.approx(rates[trainer.step], rel=1e-6)
        checkpoint = trainer.train(end).checkpoint
    assert max_difference(weights_of(straight), weights_of(trainer)) == 0.0
    meta = read_checkpoint(checkpoint.path)[0]
    assert meta["optimizer"]["loss"] == "l1" and meta["optimizer"]["clip_norm"] == 0.05
    assert meta["optimizer"]["schedule"]["milestones"] == [3, 7]


@pytest.mark.parametrize("change", [{"loss": "mse"}, {"loss": "charbonnier"}, {"clip_norm": None},
                                    {"schedule": None}])
def test_the_loss_clipping_and_schedule_each_change_the_training(source, tmp_path, change):
    base = Trainer(TrainConfig(**TINY, epochs=3, **SCHEDULED), source, tmp_path / "a")
    other = Trainer(TrainConfig(**TINY, epochs=3, **{**SCHEDULED, **change}), source, tmp_path / "b")
    losses = [trainer.train(4).loss for trainer in (base, other)]
    # Charbonnier's loss is L1's but for |d| near its epsilon: its value tells them apart.
    assert max_difference(weights_of(base), weights_of(other)) > 1e-7 or abs(losses[0] - losses[1]) > 1e-7


def test_heartbeats_report_the_scheduled_learning_rate(source, tmp_path):
    config = TrainConfig(**{**TINY, "learning_rate": 0.01, "epochs": 2},
                         schedule={"kind": "cosine", "warmup_steps": 2})
    trainer = Trainer(config, source, tmp_path)
    beats = []
    trainer.train(4, heartbeat_every_s=0, on_heartbeat=beats.append)
    assert [b.learning_rate for b in beats] == [trainer.schedule.at(b.step) for b in beats]
    assert beats[0].learning_rate == 0.01  # step 1 is the warm-up's last step


def test_model_defaults_and_bad_optimiser_settings(source, tmp_path):
    assert Trainer(TrainConfig(**TINY), source, tmp_path).loss == "mse"
    with pytest.raises(ModelError) as caught:
        Trainer(TrainConfig(**TINY, loss="l2", clip_norm=0), source, tmp_path)
    assert "loss='l2' must be one of mse, l1, charbonnier" in str(caught.value)
    assert "clip_norm=0 must be a positive number" in str(caught.value)
    with pytest.raises(TrainingError, match=r"schedule.milestones = \[99\]: 99 is past the run's end"):
        Trainer(TrainConfig(**TINY, schedule={"kind": "step", "milestones": [99]}), source, tmp_path)

"""Precision, XLA and determinism per run: float16 with loss scaling resumes exactly, checkpoints
stay float32 and move between precisions with a notice."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shardrun.train.data import MemoryImageSource
from shardrun.train.models import ModelError
from shardrun.train.trainer import TrainConfig, Trainer, read_checkpoint

TINY = dict(model="espcn", scale=2, channels=1, options={"n1": 4, "n2": 4}, patch_size=16,
            batch_size=4, patches_per_image=2, images_per_window=2, seed=5, epochs=2)


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(3)
    blobs = []
    for _ in range(4):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (34, 36, 3), dtype=np.uint8)).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    return MemoryImageSource(blobs)


def weights(trainer):
    return [w.numpy().copy() for w in trainer.model.weights]


def test_mixed_float16_resumes_exactly_and_checkpoints_stay_float32(source, tmp_path):
    config = TrainConfig(**TINY, precision="mixed_float16")
    straight = Trainer(config, source, tmp_path / "straight")
    assert any("mixed_float16" in n and "CPU" in n for n in straight.notices)
    assert straight.model.layers[-1].compute_dtype == "float16" or any(
        layer.compute_dtype == "float16" for layer in straight.model.layers)
    straight.train()
    first = Trainer(config, source, tmp_path / "sliced")
    half = first.train(first.total_steps // 2).checkpoint
    meta, stored, slots = read_checkpoint(half.path)
    assert {a.dtype for a in stored + slots} <= {np.dtype(np.float32), np.dtype(np.int64)}
    assert meta["precision"] == "mixed_float16" and len(meta["loss_scale"]) == 4
    second = Trainer(config, source, tmp_path / "sliced2")
    second.restore([half.path])
    second.train()
    for a, b in zip(weights(straight), weights(second)):
        np.testing.assert_array_equal(a, b)
    # The loss scale's state (its step counter since the scale last changed) is restored, not
    # started afresh at the cut.
    state = [float(v.numpy()) for v in second._loss_scale_variables()]
    assert state == [float(v.numpy()) for v in straight._loss_scale_variables()]
    assert max(state) > 0


def test_a_checkpoint_moves_between_precisions_with_a_notice(source, tmp_path):
    mixed = Trainer(TrainConfig(**TINY, precision="mixed_float16"), source, tmp_path / "m")
    checkpoint = mixed.train(3).checkpoint
    plain = Trainer(TrainConfig(**TINY), source, tmp_path / "f")
    result = plain.restore([checkpoint.path])
    assert result.step == 3
    assert any("mixed_float16" in n and "bit-exactness" in n for n in result.notices)
    for a, b in zip(weights(mixed), weights(plain)):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(plain.train().loss)
    # A float32 run's checkpoint resumes in bfloat16 too.
    brain = Trainer(TrainConfig(**TINY, precision="bfloat16"), source, tmp_path / "b")
    assert brain.restore([checkpoint.path]).step == 3
    assert np.isfinite(brain.train().loss)


def test_deterministic_turns_op_determinism_on_and_off(source, tmp_path):
    from tensorflow.python.framework.config import is_op_determinism_enabled

    fast = Trainer(TrainConfig(**TINY, deterministic=False), source, tmp_path / "fast")
    assert not is_op_determinism_enabled()
    assert fast.jit_compile is False  # no accelerator here: the auto choice stays off
    Trainer(TrainConfig(**TINY, xla=True), source, tmp_path / "exact")
    assert is_op_determinism_enabled()


def test_bad_precision_settings_are_named(source):
    with pytest.raises(ModelError) as caught:
        TrainConfig(**TINY, precision="float8", deterministic="yes").resolve()
    assert "precision='float8' must be one of 'float32', 'mixed_float16', 'bfloat16'" in str(caught.value)
    assert "deterministic='yes'" in str(caught.value)
    run = dict(TINY, name="r", precision="bfloat16", xla=True, deterministic=False)
    config = TrainConfig.from_run(run)
    assert (config.precision, config.xla, config.deterministic) == ("bfloat16", True, False)

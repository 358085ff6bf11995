"""Several devices in one worker: the trainer under tf.distribute.MirroredStrategy, on this
machine's CPU split into two logical devices (in a subprocess: the split must come before
TensorFlow touches a device, and lasts for the process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

# Two replicas sum two half-batch gradients where one device takes one full-batch gradient: the
# same arithmetic in another order, so losses agree to float32 rounding, amplified a little by
# Adam's division by the moment's square root over the run's 12 steps. Measured here: losses
# 1.7e-7 relative at most, weights 1.5e-8 apart (of order 0.1-1); pinned with room at 1e-5 each.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5

SCRIPT = textwrap.dedent("""
    import io, json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

    from pathlib import Path
    import numpy as np
    from PIL import Image
    from shardrun.train.data import MemoryImageSource
    from shardrun.train.trainer import TrainConfig, Trainer, TrainingError

    out = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(5):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (34, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    source = MemoryImageSource(blobs)
    TINY = dict(model="espcn", scale=2, channels=1, options={"n1": 6, "n2": 6}, patch_size=16,
                batch_size=6, patches_per_image=4, images_per_window=2, seed=3, epochs=3)
    config = TrainConfig(**TINY)
    report = {"logical_cpus": len(tf.config.list_logical_devices("CPU"))}

    def weights(trainer):
        return [w.numpy().copy() for w in trainer.model.weights]

    def trajectory(devices, name):
        trainer = Trainer(config, source, out / name, devices=devices)
        losses = []
        while trainer.step < trainer.total_steps:
            losses.append(trainer.train(until_step=trainer.step + 1, checkpoint_at_end=False).loss)
        return trainer, losses

    one, one_losses = trajectory(None, "one")
    two, two_losses = trajectory(2, "two")
    report["replicas"] = [one.replicas, two.replicas]
    report["losses"] = [one_losses, two_losses]
    report["weight_difference"] = max(float(np.abs(a - b).max()) for a, b in zip(weights(one), weights(two)))

    # exact resume on two devices: straight vs interrupted at two steps, each part a fresh trainer
    straight = Trainer(config, source, out / "straight", devices=2)
    straight.train()
    checkpoint = None
    for end in (5, 9, straight.total_steps):
        part = Trainer(config, source, out / "sliced", devices=2)
        if checkpoint is not None:
            part.restore([checkpoint])
        checkpoint = part.train(until_step=end).checkpoint.path
    report["resume_difference"] = max(float(np.abs(a - b).max())
                                      for a, b in zip(weights(straight), weights(part)))
    report["resumed_replicas"] = part.replicas
    try:
        Trainer(TrainConfig(**{**TINY, "batch_size": 5}), source, out / "odd", devices=2)
        report["odd_batch"] = None
    except TrainingError as error:
        report["odd_batch"] = str(error)
    (out / "report.json").write_text(json.dumps(report))
""")


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "report.json").read_text())


def test_two_devices_follow_the_one_device_loss_trajectory(mirrored):
    assert mirrored["logical_cpus"] == 2 and mirrored["replicas"] == [1, 2]
    one, two = (np.array(losses) for losses in mirrored["losses"])
    assert len(one) == len(two) == 12 and np.all(one > 0)
    np.testing.assert_allclose(two, one, rtol=LOSS_RTOL, atol=0)
    assert mirrored["weight_difference"] <= WEIGHT_ATOL


def test_two_devices_resume_exactly(mirrored):
    assert mirrored["resumed_replicas"] == 2
    assert mirrored["resume_difference"] == 0.0


def test_a_batch_that_does_not_split_over_the_devices_is_refused(mirrored):
    assert mirrored["odd_batch"] == ("batch_size=5 cannot be split over 2 devices: the global batch must be "
                                     "a multiple of the device count (e.g. 4 or 6)")

"""Training throughput on this machine, as a profile the planner reads, and the source paper's
figures to compare it with.

A measurement runs the real trainer (input pipeline included) on real photographs (scikit-image's
sample images, or any ImageSource) for a few warm-up steps, then times `steps` more. The profile
is TOML of this shape (read back with tomllib by shardrun.config.platforms.load_profile):

    [profile]
    name = "..."
    device = "..."
    measured = "YYYY-MM-DD"
    source = "shardrun bench"
    [models.decusr]
    patches_per_second = 812.5
    patch_size = 32
    scale = 2
    channels = 1
    batch_size = 64
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardrun.clock import Clock, SystemClock
from shardrun.train.schedule import steps_per_epoch
from shardrun.train.trainer import TrainConfig, Trainer, TrainingError

# Real photographs shipped with scikit-image: colour and grayscale, PNG and JPEG.
SAMPLE_IMAGES = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg",
    "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "brick.png", "coins.png",
)


@dataclass(frozen=True)
class BenchResult:
    """One model's measured training speed."""

    model: str
    options: Mapping[str, int]
    parameters: int
    scale: int
    channels: int
    patch_size: int
    batch_size: int
    steps: int
    seconds: float

    @property
    def patches_per_second(self) -> float:
        return self.steps * self.batch_size / self.seconds

    def seconds_per_epoch(self, num_images: int, patches_per_image: int) -> float:
        """Returns the time of one epoch of `num_images` × `patches_per_image` patches."""
        steps = math.ceil(num_images * patches_per_image / self.batch_size)
        return steps * self.batch_size / self.patches_per_second


def sample_source(names: Sequence[str] = SAMPLE_IMAGES):
    """Returns a MemoryImageSource of scikit-image's sample photographs."""
    import skimage

    from shardrun.train.data import MemoryImageSource

    folder = Path(skimage.__file__).parent / "data"
    return MemoryImageSource([(folder / name).read_bytes() for name in names], list(names))


def device_description() -> str:
    """Returns the training device in words: the first GPU's name, else the CPU and its cores."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        name = details.get("device_name") or gpus[0].name
        return f"{name} (GPU)" if len(gpus) == 1 else f"{name} (GPU, {len(gpus)} present, 1 used)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU ({cores} cores)"


def measure(
    config: TrainConfig,
    source=None,
    *,
    steps: int = 30,
    warmup: int = 5,
    steps_per_call: int = 1,
    clock: Clock | None = None,
) -> BenchResult:
    """Returns the trainer's measured speed for `config` after `warmup` untimed steps.

    `config.epochs` is raised as needed so that the run is long enough.
    """
    if steps < 1 or warmup < 1:
        raise TrainingError(f"steps={steps} and warmup={warmup} must both be at least 1")
    source = source if source is not None else sample_source()
    clock = clock or SystemClock()
    per_epoch = steps_per_epoch(len(source), config.patches_per_image, config.batch_size)
    config = dataclasses.replace(config, epochs=math.ceil((warmup + steps) / per_epoch))
    with tempfile.TemporaryDirectory(prefix="shardrun-bench-") as folder:
        trainer = Trainer(config, source, folder, clock=clock)
        # The warm-up traces the step function and fills the input pipeline.
        trainer.train(warmup, steps_per_call=steps_per_call, checkpoint_at_end=False)
        result = trainer.train(warmup + steps, steps_per_call=steps_per_call,
                               checkpoint_at_end=False)
        parameters = sum(int(w.numpy().size) for w in trainer.model.trainable_weights)
    return BenchResult(config.model, dict(trainer.model_config.options), parameters, config.scale,
                       config.channels, config.patch_size, config.batch_size, steps,
                       result.elapsed_s)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def profile_toml(results: Sequence[BenchResult], *, name: str, device: str, measured: str,
                 source: str = "shardrun bench", comment: str = "") -> str:
    """Returns the profile TOML of the measured models (one [models.NAME] table each)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += ["[profile]"]
    for key, value in (("name", name), ("device", device), ("measured", measured),
                       ("source", source)):
        lines.append(f"{key} = {_toml_value(value)}")
    for result in results:
        lines += ["", f"[models.{result.model}]"]
        lines.append(f"patches_per_second = {round(result.patches_per_second, 1)!r}")
        for key in ("patch_size", "scale", "channels", "batch_size"):
            lines.append(f"{key} = {getattr(result, key)}")
    return "\n".join(lines) + "\n"


def write_profile(path: Path | str, text: str) -> Path:
    """Returns the path the profile was written to (atomically: temp file, then rename)."""
    path = Path(path)
    tomllib.loads(text)  # never leave a file the planner cannot read
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text(text, "utf-8")
    os.replace(temp, path)
    return path



"""The time-boxed trainer: trains a run from its current step to a target step or until a deadline
nears, checkpoints into single files, and resumes from them exactly.

A checkpoint is one uncompressed `.npz` file (numpy's zip of arrays, every member CRC-checked on
read), written to a temporary name and renamed into place. It holds:

- `meta`: UTF-8 JSON — format and version, the model's identity (name, scale, channels, options),
  the data layout (patch size, batch size, patches per image, seed, window, number of images),
  the optimiser's settings, the global step and the RNG state;
- `weights/NNNN`: the model's variables in model order;
- `optimizer/NNNN`: the optimiser's variables (iteration count, learning rate, Adam moments).

RNG state: every random choice of a run is a stateless hash of (seed, epoch, step, ...) (see
data.py; initial weights come from seeded initialisers), so the seed and the step are the whole
RNG state; the checkpoint records both.

Nothing here prints or exits: notices (a fallback to an older checkpoint) are returned and logged
on the `shardrun.train` logger.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shardrun.clock import Clock, SystemClock
from shardrun.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    CheckpointMismatchError,
    TrainingError,
    checkpoint_filename,
    file_sha256,
    read_checkpoint,
    write_atomically,
)
from shardrun.train.cache import DecodedImages
from shardrun.train.crops import crop_dataset, device_pairs
from shardrun.train.data import ImageSource, PatchSpec, SampleOrder, check_image_sizes, make_dataset
from shardrun.train.init import load_init_file
from shardrun.train.models import (ModelConfig, ModelError, build_model, check_network, check_patch_size,
                                   resolve_model)
from shardrun.train.optim import LOSSES, loss_function, make_optimizer
from shardrun.train.schedule import LrSchedule, ScheduleError, lr_schedule

log = logging.getLogger("shardrun.train")

# The compute precisions a run may ask for, and the Keras dtype policy of each: the variables, and
# so the checkpoints, stay float32 in every one.
PRECISIONS = {"float32": "float32", "mixed_float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}

# Time kept back before a deadline for the final checkpoint, at the least; the trainer keeps
# back twice its slowest checkpoint write when that is more.
DEFAULT_RESERVE_S = 30.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run's training, independent of the job file (see `from_run`)."""

    model: str
    scale: int
    channels: int = 1
    options: Mapping[str, int] = field(default_factory=dict)
    patch_size: int = 32
    batch_size: int = 64
    patches_per_image: int = 16
    epochs: int = 1
    seed: int = 0
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    images_per_window: int = 16
    precision: str = "float32"  # "mixed_float16" or "bfloat16": compute dtype; weights stay float32
    xla: bool | None = None  # XLA-compile the step; None: on an accelerator unless deterministic
    deterministic: bool = True  # op determinism: exact resume on the same hardware
    loss: str | None = None  # None: the model's default (MSE; L1 for EDSR)
    clip_norm: float | None = None  # clip gradients to this global norm
    schedule: Mapping[str, Any] | None = None  # the job file's [runs.schedule] (None: constant)
    network_path: str | None = None  # a `file:` model's Python file on this machine
    network_sha256: str | None = None  # what its bytes must hash to (the plan's record)
    init: str | None = None  # a weights file loaded before step 0 (see train/init.py)
    init_sha256: str | None = None
    init_output_scale: float | None = None  # divides the last layer: 255 for 0-255 outputs

    @classmethod
    def from_run(cls, run: Mapping[str, Any], files: Mapping[str, str] | None = None) -> "TrainConfig":
        """Returns the training settings among a run's settings, given as plain values: the job
        file's `[[runs]]` table as the plan records it (`RunConfig.to_payload`, the ledger's
        `runs.config`).

        Keys that are not settings of training (the run's name, its planned throughput) belong
        to planning and are left out; keys a run does not give keep their defaults here. Values
        are checked by `resolve`, not here.

        `files`: where the run's files are on this machine, by kind (`network`: a `file:` model's
        Python file, `init`: its init weights); their hashes come from the run's `files` record
        (the plan's), so a worker's copy from the store is checked against what was planned.
        """
        # Plain values, not a config object: train/ stands on the ground floor alone, and a
        # mapping reads the same from a job file, a journal event or a ledger row.
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.name not in run
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise TrainingError(f"the run's settings lack {', '.join(missing)}; got {sorted(run)}")
        values = {f.name: run[f.name] for f in fields if f.name in run}
        for name in ("options", "schedule"):
            if name in values and values[name] is not None:
                values[name] = dict(values[name])
        if values.get("options") is None:
            values.pop("options", None)
        files, recorded = dict(files or {}), run.get("files") or {}
        if "network" in files:
            values["network_path"] = str(files["network"])
        if "init" in files:
            values["init"] = str(files["init"])
        values.setdefault("network_sha256", (recorded.get("network") or {}).get("sha256"))
        values.setdefault("init_sha256", (recorded.get("init") or {}).get("sha256"))
        return cls(**values)

    def resolve(self) -> ModelConfig:
        """Returns the model description; raises ModelError naming every problem at once."""
        problems = []
        model = None
        try:
            model = resolve_model(self.model, self.scale, self.channels, self.options,
                                  self.network_path, self.network_sha256)
        except ModelError as error:
            problems.extend(error.problems)
        if model is not None or isinstance(self.scale, int) and self.scale > 0:
            try:
                check_patch_size(self.patch_size, self.scale)
            except ModelError as error:
                problems.append(str(error))
        for name in ("batch_size", "patches_per_image", "epochs", "images_per_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r} must be a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed={self.seed!r} must be a non-negative integer")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            problems.append(f"learning_rate={self.learning_rate!r} must be a positive number")
        if not (isinstance(self.beta_1, (int, float)) and 0 <= self.beta_1 < 1):
            problems.append(f"beta_1={self.beta_1!r} must be in [0, 1)")
        if self.precision not in PRECISIONS:
            problems.append(f"precision={self.precision!r} must be one of "
                            + ", ".join(map(repr, PRECISIONS)))
        for name in ("xla", "deterministic"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or value is None and name == "xla"):
                problems.append(f"{name}={value!r} must be true or false")
        if self.loss is not None and self.loss not in LOSSES:
            problems.append(f"loss={self.loss!r} must be one of {', '.join(LOSSES)}")
        if self.clip_norm is not None and not (
                isinstance(self.clip_norm, (int, float)) and not isinstance(self.clip_norm, bool)
                and self.clip_norm > 0):
            problems.append(f"clip_norm={self.clip_norm!r} must be a positive number")
        if self.init_output_scale is not None and not (
                isinstance(self.init_output_scale, (int, float)) and self.init_output_scale > 0):
            problems.append(f"init_output_scale={self.init_output_scale!r} must be a positive number")
        if problems:
            raise ModelError("; ".join(problems), problems)
        return model

    def loss_name(self, model: ModelConfig) -> str:
        """Returns the loss the run trains on: its own, else its model's default."""
        return self.loss or model.spec.loss

    def lr_schedule(self, steps_per_epoch: int, total_steps: int) -> LrSchedule:
        """Returns the learning rate per global step; raises ScheduleError where the schedule
        does not fit a run of `total_steps` steps."""
        return lr_schedule(self.learning_rate, self.schedule, steps_per_epoch, total_steps)

    def data_layout(self, num_images: int) -> dict[str, int]:
        """Returns what fixes the sample order; a resume must find the same values."""
        return {
            "num_images": num_images,
            "patch_size": self.patch_size,
            "batch_size": self.batch_size,
            "patches_per_image": self.patches_per_image,
            "seed": self.seed,
            "images_per_window": self.images_per_window,
        }


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint written: where, at which step, its size and sha256, and why."""

    path: Path
    step: int
    size: int
    sha256: str
    reason: str  # "steps", "time", "target", "deadline", "stopped" or "manual"
    final: bool
    loss: float | None = None  # mean loss of the steps since the previous checkpoint (set by `train`)
    patches_per_second: float | None = None  # this call's training speed so far (set by `train`)
    seconds: float | None = None  # how long writing the file took (the clock's monotonic seconds)


@dataclass(frozen=True)
class Progress:
    """What a heartbeat reports."""

    step: int
    target: int
    loss: float | None  # mean loss since the previous heartbeat
    patches_per_second: float | None
    elapsed_s: float
    learning_rate: float | None = None  # the rate of the next step (the schedule at `step`)


@dataclass(frozen=True)
class RestoreResult:
    """The checkpoint restored, its step, and notices about the ones that could not be read."""

    path: Path
    step: int
    notices: tuple[str, ...]


@dataclass(frozen=True)
class TrainResult:
    """How a call of `train` ended."""

    step: int
    target: int
    reason: str  # "target", "deadline" or "stopped"
    steps_done: int
    checkpoint: CheckpointInfo | None
    loss: float | None  # mean loss of this call's steps
    elapsed_s: float  # training time, the final checkpoint not included


@dataclass
class _Tally:
    """A sum of step losses and the number of steps it covers."""

    total: float = 0.0
    steps: int = 0

    def mean(self) -> float | None:
        """Returns the mean loss per step, or None before any step."""
        return self.total / self.steps if self.steps else None


@dataclass(frozen=True)
class _Asked:
    """What one call of `Trainer.train` was asked: how far, until when, and when to report."""

    target: int
    deadline: float | None
    reserve_s: float
    checkpoint_every_steps: int | None
    checkpoint_every_s: float | Callable[[], float | None] | None
    heartbeat_every_s: float | None
    steps_per_call: int
    on_checkpoint: Callable[[CheckpointInfo], None] | None
    on_heartbeat: Callable[[Progress], None] | None
    on_report: Callable[[Progress], None] | None = None  # a live display's, every report_every_s
    report_every_s: float = 2.0


@dataclass
class _Slice:
    """How far one call of `Trainer.train` has got: its times (the clock's monotonic()), its loss
    tallies and its latest checkpoint."""

    asked: _Asked
    start_step: int
    started: float
    last_checkpoint: float  # when the latest periodic checkpoint was written
    beat_started: float  # when the current heartbeat's interval began
    beat_step: int  # and at which step
    report_started: float = 0.0  # when the live display was last told
    report_step: int = 0
    call_s: float = 0.0  # how long the latest call took (it waits for the one before to end)
    pending: tuple[Any, int] | None = None  # the latest call's loss tensor and steps, not yet read
    whole: _Tally = field(default_factory=_Tally)  # every step of this call
    since_checkpoint: _Tally = field(default_factory=_Tally)
    since_beat: _Tally = field(default_factory=_Tally)
    since_report: _Tally = field(default_factory=_Tally)
    checkpoint: CheckpointInfo | None = None

    def settle(self) -> None:
        """Adds the pending call's loss to every tally; reading it waits for that call to end."""
        if self.pending is not None:
            loss, steps = float(self.pending[0]), self.pending[1]
            for tally in (self.whole, self.since_checkpoint, self.since_beat, self.since_report):
                tally.total += loss
                tally.steps += steps
            self.pending = None


def _auto_jit() -> bool:
    """Returns whether to XLA-compile the step: as Keras's `jit_compile="auto"` decides, on an
    accelerator unless op determinism is on (not every op has a deterministic XLA kernel)."""
    from tensorflow.python.framework.config import is_op_determinism_enabled

    return bool(_accelerators()) and not is_op_determinism_enabled()


def _accelerators() -> list:
    import tensorflow as tf

    return [d for d in tf.config.list_physical_devices() if d.device_type != "CPU"]


def hardware() -> str:
    """Returns what a checkpoint records of the machine that trained it: the first GPU's name and
    how many there are, else "CPU" (bit-exact resume needs the same)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name") or "GPU"
    return f"{len(gpus)} x {name}"


def choose_strategy(devices=None):
    """Returns the tf.distribute.MirroredStrategy to train under, or None for one device.

    `devices`: None (auto) mirrors over every logical GPU when there are more than one; a count
    takes the first that many logical GPUs (logical CPUs on a machine without one); a sequence of
    device names takes those. One device is plain training, without a strategy.
    """
    import tensorflow as tf

    if devices is None:
        names = [d.name for d in tf.config.list_logical_devices("GPU")]
    elif isinstance(devices, int) and not isinstance(devices, bool):
        kind = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        found = [d.name for d in tf.config.list_logical_devices(kind)]
        if not 1 <= devices <= len(found):
            raise TrainingError(f"devices={devices} asks for more {kind}s than the {len(found)} this "
                                f"process sees (or fewer than one)")
        names = found[:devices]
    else:
        names = list(devices)
        if not names:
            raise TrainingError("devices=[] names no device")
    return tf.distribute.MirroredStrategy(names) if len(names) > 1 else None


def set_determinism(on: bool) -> None:
    """Turns TensorFlow's op determinism on or off for the process (it is process-wide)."""
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    if on:
        tf.config.experimental.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


class Trainer:
    """Trains one run of a job in slices; see the module docstring for the checkpoint format.

    The model and the optimiser (built, so its variables exist) are created here; call `restore`
    to continue from a checkpoint, then `train`. `jit_compile` (default: as Keras decides, XLA
    on a GPU unless op determinism is on) compiles the training step with XLA.

    The input: each image is decoded once into `cache_dir` (cache.py; in memory without one) and
    the host only gathers integer crops; cropping to the patch and the bicubic degradation run in
    the compiled step, on the device (crops.py). `device_input=False` uses data.py's tf.data
    pipeline instead, which decodes and degrades on the host.

    Several devices (`devices`, see `choose_strategy`; by default every GPU when there are more
    than one): the model and optimiser are mirrored under tf.distribute.MirroredStrategy and
    `batch_size` stays the global batch, so a run means the same on one GPU or two. Each
    replica takes its consecutive `batch_size / replicas` samples of the batch, makes its pairs
    and gradients, and the optimiser sums the replicas' gradients of (local mean loss /
    replicas): the gradient of the global mean. Exact resume holds on the same device count.
    """

    def __init__(
        self,
        config: TrainConfig,
        source: ImageSource,
        checkpoint_dir: Path | str,
        *,
        clock: Clock | None = None,
        keep: int = 2,
        parallel_input: bool = True,
        jit_compile: bool | None = None,
        cache_dir: Path | str | None = None,
        device_input: bool = True,
        devices=None,
    ):
        import contextlib

        import keras

        self.config = config
        self.model_config = config.resolve()
        if len(source) == 0:
            raise TrainingError("the image source is empty; a run needs at least one image")
        check_image_sizes(source, config.patch_size, config.scale)
        self.source = source
        self.order = SampleOrder(len(source), config.patches_per_image, config.batch_size,
                                 config.seed, config.images_per_window)
        self.patch_spec = PatchSpec(config.scale, config.channels, config.patch_size,
                                    self.model_config.input_kind)
        self.total_steps = config.epochs * self.order.steps_per_epoch
        self.checkpoint_dir = Path(checkpoint_dir)
        self.clock = clock or SystemClock()
        self.keep = max(1, keep)
        self.parallel_input = parallel_input
        self.device_input = device_input
        self.notices: list[str] = []  # what this run should know about its settings here
        set_determinism(config.deterministic)
        if config.precision == "mixed_float16" and not _accelerators():
            self.notices.append("precision='mixed_float16' on a CPU runs, but slower than float32 "
                                "there: CPUs have no fast float16 arithmetic")
            log.warning(self.notices[-1])
        if jit_compile is None:
            jit_compile = config.xla
        self.strategy = choose_strategy(devices)
        self.replicas = 1 if self.strategy is None else self.strategy.num_replicas_in_sync
        if config.batch_size % self.replicas:
            raise TrainingError(
                f"batch_size={config.batch_size} cannot be split over {self.replicas} devices: the "
                f"global batch must be a multiple of the device count (e.g. "
                f"{config.batch_size // self.replicas * self.replicas or self.replicas} or "
                f"{(config.batch_size // self.replicas + 1) * self.replicas})")
        self.images = DecodedImages(source, cache_dir) if device_input else None
        self.jit_compile = _auto_jit() if jit_compile is None else jit_compile
        try:
            self.schedule = config.lr_schedule(self.order.steps_per_epoch, self.total_steps)
        except ScheduleError as error:
            raise TrainingError(f"the run's schedule does not fit its {self.total_steps} steps: {error}") from error
        self.loss = config.loss_name(self.model_config)
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(PRECISIONS[config.precision])
        scope = contextlib.nullcontext() if self.strategy is None else self.strategy.scope()
        with scope:
            try:
                self.model = build_model(self.model_config, seed=config.seed)
            finally:
                keras.config.set_dtype_policy(previous)
            if self.model_config.network is not None:
                check_network(self.model_config, self.model)
            if config.init:
                load_init_file(self.model, config.init, config.init_sha256, config.init_output_scale)
            # `adam` holds the state a checkpoint keeps, in every precision; float16 wraps it in
            # a loss-scaling optimizer, whose own state (the dynamic scale) goes to the meta.
            self.adam = make_optimizer(self.schedule, config.beta_1, config.clip_norm)
            self.optimizer = (keras.optimizers.LossScaleOptimizer(self.adam)
                              if config.precision == "mixed_float16" else self.adam)
            self.optimizer.build(self.model.trainable_variables)
        self.step = 0
        self._stop = False
        self._run_steps = None
        self._slowest_save_s = 0.0
        self._written: list[Path] = []

    # --- checkpoints ---------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model_config.identity(),
            "data": self.config.data_layout(len(self.source)),
            "optimizer": {"name": "adam", "learning_rate": self.config.learning_rate,
                          "beta_1": self.config.beta_1, "schedule": self.schedule.settings(),
                          "loss": self.loss, "clip_norm": self.config.clip_norm},
            "init": None if not self.config.init else {
                "sha256": self.config.init_sha256 or file_sha256(Path(self.config.init)),
                "output_scale": self.config.init_output_scale},
            "step": self.step,
            "rng": {"seed": self.config.seed, "samples_seen": self.step * self.config.batch_size},
            "written_at": self.clock.now(),
            "weights": len(self.model.weights),
            "optimizer_variables": len(self.adam.variables),
            "precision": self.config.precision,
            "hardware": hardware(),
            "replicas": self.replicas,
            "loss_scale": [float(v.numpy()) for v in self._loss_scale_variables()],
        }

    def _loss_scale_variables(self) -> list:
        """Returns the loss-scaling optimizer's own variables (none outside mixed_float16)."""
        if self.optimizer is self.adam:
            return []
        inner = {id(v) for v in self.adam.variables}
        return [v for v in self.optimizer.variables if id(v) not in inner]

    def save_checkpoint(self, path: Path | str | None = None, reason: str = "manual",
                        final: bool = False) -> CheckpointInfo:
        """Returns the checkpoint written (atomically) at the current step.

        By default it goes to `checkpoint_dir`, where only the newest `keep` files stay.
        """
        started = self.clock.monotonic()
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = Path(path) if path is not None else self.checkpoint_dir / checkpoint_filename(self.step)
        arrays = {"meta": np.frombuffer(json.dumps(self._meta()).encode("utf-8"), np.uint8)}
        for i, variable in enumerate(self.model.weights):
            arrays[f"weights/{i:04d}"] = np.asarray(variable.numpy())
        for i, variable in enumerate(self.adam.variables):
            arrays[f"optimizer/{i:04d}"] = np.asarray(variable.numpy())
        write_atomically(path, arrays)
        if path.parent == self.checkpoint_dir:
            self._remember(path)
        seconds = self.clock.monotonic() - started
        self._slowest_save_s = max(self._slowest_save_s, seconds)
        return CheckpointInfo(path, self.step, path.stat().st_size, file_sha256(path), reason,
                              final, seconds=seconds)

    def _remember(self, path: Path) -> None:
        # Keep the newest `keep` files this trainer wrote: the previous one is the fallback when
        # the newest cannot be read.
        if path in self._written:
            self._written.remove(path)
        self._written.append(path)
        while len(self._written) > self.keep:
            self._written.pop(0).unlink(missing_ok=True)

    def _check_identity(self, path: Path, meta: dict[str, Any], weights, slots) -> None:
        theirs, ours = meta.get("model", {}), self.model_config.identity()
        if theirs != ours:
            try:
                described = ModelConfig(theirs["name"], theirs["scale"], theirs["channels"],
                                        theirs["options"]).describe()
            except (KeyError, TypeError):
                described = repr(theirs)
            raise CheckpointMismatchError(
                f"checkpoint {path} holds {described}, but this run trains "
                f"{self.model_config.describe()}"
            )
        layout = self.config.data_layout(len(self.source))
        stored = meta.get("data", {})
        changed = [f"{key}={stored.get(key)!r} (now {value!r})"
                   for key, value in layout.items() if stored.get(key) != value]
        if changed:
            raise CheckpointMismatchError(
                f"checkpoint {path} was trained with {', '.join(changed)}; resuming it would not "
                f"continue the same sample order"
            )
        expected = [tuple(v.shape) for v in self.model.weights]
        expected_slots = [tuple(v.shape) for v in self.adam.variables]
        if [w.shape for w in weights] != expected or [s.shape for s in slots] != expected_slots:
            raise CheckpointMismatchError(
                f"checkpoint {path} has variables of other shapes than "
                f"{self.model_config.describe()}"
            )

    def restore(self, candidates: Sequence[Path | str]) -> RestoreResult:
        """Returns the checkpoint restored: the first of `candidates` (newest first) that reads.

        An unreadable file is skipped with a notice; a readable one of a different model or data
        layout raises CheckpointMismatchError.
        """
        notices: list[str] = []
        for candidate in candidates:
            path = Path(candidate)
            try:
                meta, weights, slots = read_checkpoint(path)
            except CheckpointError as error:
                notices.append(f"{error}; falling back to the previous checkpoint")
                log.warning(notices[-1])
                continue
            self._check_identity(path, meta, weights, slots)
            for variable, value in zip(self.model.weights, weights):
                variable.assign(value)
            for variable, value in zip(self.adam.variables, slots):
                variable.assign(value)
            self._restore_loss_scale(meta)
            notices += self._portability_notices(path, meta)
            self.step = int(meta["step"])
            return RestoreResult(path, self.step, tuple(notices))
        if not candidates:
            raise CheckpointError("no checkpoint was given to restore")
        raise CheckpointError(
            f"none of the {len(candidates)} checkpoint(s) can be read: "
            + " | ".join(n.removesuffix("; falling back to the previous checkpoint")
                         for n in notices)
        )

    def _restore_loss_scale(self, meta: dict[str, Any]) -> None:
        # A checkpoint of another precision has no loss scale (or one this run does not use):
        # the scale then starts afresh, as on a new run, which is deterministic too.
        ours, stored = self._loss_scale_variables(), meta.get("loss_scale") or []
        if ours and len(stored) == len(ours) and meta.get("precision") == self.config.precision:
            for variable, value in zip(ours, stored):
                variable.assign(value)
        else:
            fresh = keras_loss_scale_initial()
            for variable in ours:
                variable.assign(fresh.get(variable.path.rsplit("/", 1)[-1], 0))

    def _portability_notices(self, path: Path, meta: dict[str, Any]) -> list[str]:
        """Returns notices for a checkpoint trained in another precision or on other hardware."""
        theirs = (meta.get("precision", "float32"), meta.get("hardware"), meta.get("replicas", 1))
        ours = (self.config.precision, hardware(), self.replicas)
        if theirs[1] is None or theirs == ours:
            return []
        notice = (f"checkpoint {path} was trained in {theirs[0]} on {theirs[1]} "
                  f"({theirs[2]} replica{'s' if theirs[2] != 1 else ''}); this run resumes "
                  f"in {ours[0]} on {ours[1]} ({ours[2]} replica{'s' if ours[2] != 1 else ''}): it "
                  f"continues correctly, but bit-exactness with an uninterrupted run needs the same "
                  f"hardware, device count and precision")
        log.warning(notice)
        return [notice]

    # --- training ------------------------------------------------------------------------

    def learning_rate_at(self, step: int | None = None) -> float:
        """Returns the learning rate of the step `step` (default: the next one to train)."""
        return self.schedule.at(self.step if step is None else step)

    def request_stop(self) -> None:
        """Asks `train` to stop after the current step (e.g. from a heartbeat callback); asked
        before `train` is called, that call stops before its first step."""
        self._stop = True

    def dataset(self, start_step: int | None = None):
        """Returns the training batches from `start_step` (default: the current step) on."""
        start = self.step if start_step is None else start_step
        if self.device_input:
            return crop_dataset(self.images, self.order, self.patch_spec, start)
        return make_dataset(self.source, self.order, self.patch_spec, start,
                            parallel=self.parallel_input)

    def _loss_and_gradients(self, replicas: int = 1):
        """Returns f(inputs, target) -> (loss, gradients) for one device's share of a batch: the
        pairs made on the device from uint8 crops where needed, the run's loss, loss scaling
        under mixed_float16, and (with several replicas) each replica's 1/replicas of its mean,
        since the optimiser sums the replicas' gradients."""
        import tensorflow as tf

        model, optimizer, spec = self.model, self.optimizer, self.patch_spec
        loss_of, scaling = loss_function(self.loss), self.optimizer is not self.adam

        def loss_and_gradients(inputs, target):
            if inputs.dtype.is_integer:
                # Crops and their offsets (crops.py): the pairs are made here, on the device.
                inputs, target = device_pairs(inputs, target, spec)
            with tf.GradientTape() as tape:
                output = tf.cast(model(inputs, training=True), tf.float32)
                loss = loss_of(output, target)
                share = loss / replicas if replicas > 1 else loss
                scaled = optimizer.scale_loss(share) if scaling else share
            return loss, tape.gradient(scaled, model.trainable_variables)

        return loss_and_gradients

    def _compiled(self):
        if self._run_steps is None:
            import tensorflow as tf

            model, optimizer = self.model, self.optimizer
            loss_and_gradients = self._loss_and_gradients()

            # The step itself may be XLA-compiled; fetching from the iterator cannot be, so the
            # loop around it is a plain tf.function (the same split as Keras's fit).
            @tf.function(jit_compile=self.jit_compile, reduce_retracing=True)
            def single_step(inputs, target):
                loss, gradients = loss_and_gradients(inputs, target)
                optimizer.apply_gradients(zip(gradients, model.trainable_variables))
                return loss

            one_step = single_step if self.strategy is None else self._mirrored_step()

            @tf.function
            def run_one(iterator):
                inputs, target = next(iterator)
                return one_step(inputs, target)

            @tf.function
            def run_many(iterator, count):
                total = tf.constant(0.0, tf.float32)
                for _ in tf.range(count):
                    inputs, target = next(iterator)
                    total += one_step(inputs, target)
                return total

            # One step is called without the loop around it: a while loop would keep graph
            # optimisations (and op fusion) from seeing across the call.
            def run_steps(iterator, count):
                return run_one(iterator) if count == 1 else run_many(iterator, tf.constant(count))

            self._run_steps = run_steps
        return self._run_steps

    def _mirrored_step(self):
        """Returns the training step under the strategy: each replica takes its consecutive share
        of the global batch; the loss returned is the global batch's mean."""
        import tensorflow as tf

        model, optimizer, strategy, replicas = self.model, self.optimizer, self.strategy, self.replicas
        local = self.config.batch_size // replicas
        # Only the gradients are XLA-compiled: applying them all-reduces across the replicas
        # (a merge call), which stays outside the compiled function.
        gradients_of = tf.function(self._loss_and_gradients(replicas), jit_compile=self.jit_compile,
                                   reduce_retracing=True)

        def replica_step(inputs, target):
            first = tf.distribute.get_replica_context().replica_id_in_sync_group * local
            loss, gradients = gradients_of(inputs[first:first + local], target[first:first + local])
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        def one_step(inputs, target):
            losses = strategy.run(replica_step, args=(inputs, target))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

        return one_step

    def train(
        self,
        until_step: int | None = None,
        *,
        deadline: float | None = None,
        reserve_s: float = DEFAULT_RESERVE_S,
        checkpoint_every_steps: int | None = None,
        checkpoint_every_s: float | Callable[[], float | None] | None = None,
        heartbeat_every_s: float | None = None,
        on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
        on_heartbeat: Callable[[Progress], None] | None = None,
        on_report: Callable[[Progress], None] | None = None,
        report_every_s: float = 2.0,
        steps_per_call: int = 1,
        batches=None,
        checkpoint_at_end: bool = True,
    ) -> TrainResult:
        """Returns how training ended: at `until_step` (default: the run's end), at the deadline,
        or on request.

        `deadline` is in the clock's `now()` seconds; training stops early enough to leave
        max(`reserve_s`, twice the slowest checkpoint write) plus one call's time for the final
        checkpoint. Whenever this call did any step, the final state is passed to `on_checkpoint`
        once with `final=True` (and is `result.checkpoint`). `on_report` gets the same figures as
        `on_heartbeat`, every `report_every_s` (for a live display: it writes nothing).
        `checkpoint_every_s` may be a function, asked after every call of steps, so the interval can
        change while training (a worker adapts it to what its checkpoints cost); None: no periodic
        checkpoint by time. Checkpoints never change the training: the weights after any number of
        steps are the same whatever the cadence.
        `steps_per_call` steps run in one compiled call (fewer host round trips on a GPU);
        `batches` replaces the input pipeline and `checkpoint_at_end=False` skips the final
        checkpoint (benchmarks only: without it the steps done are lost).
        """
        asked = _Asked(self._target(until_step, steps_per_call), deadline, reserve_s,
                       checkpoint_every_steps, checkpoint_every_s, heartbeat_every_s, steps_per_call,
                       on_checkpoint, on_heartbeat, on_report, report_every_s)
        run_steps = self._compiled()
        iterator = iter(batches if batches is not None else self.dataset())
        now = self.clock.monotonic()
        s = _Slice(asked, self.step, started=now, last_checkpoint=now, beat_started=now, beat_step=self.step,
                   report_started=now, report_step=self.step)
        reason = "target"
        while self.step < asked.target:
            stop = self._stop_reason(s)
            if stop is not None:
                reason = stop
                break
            now = self._run_call(s, run_steps, iterator)
            self._checkpoint_if_due(s, now)
            self._heartbeat_if_due(s, now)
            self._report_if_due(s, now)
        s.settle()
        self._stop = False  # honoured; the next call starts afresh
        elapsed = self.clock.monotonic() - s.started
        if checkpoint_at_end and self.step > s.start_step:
            self._final_checkpoint(s, reason, s.started + elapsed)
        return TrainResult(self.step, asked.target, reason, self.step - s.start_step, s.checkpoint,
                           s.whole.mean(), elapsed)

    def _target(self, until_step: int | None, steps_per_call: int) -> int:
        """Returns the step a call of `train` trains to; raises TrainingError for arguments out of
        range."""
        target = self.total_steps if until_step is None else until_step
        if not isinstance(target, int) or target < self.step or target > self.total_steps:
            raise TrainingError(
                f"until_step={until_step!r} must be between the current step {self.step} and "
                f"the run's last step {self.total_steps}"
            )
        if steps_per_call < 1:
            raise TrainingError(f"steps_per_call={steps_per_call!r} must be at least 1")
        return target

    def _stop_reason(self, s: _Slice) -> str | None:
        """Returns why to stop before the next call ("stopped" or "deadline"), or None to go on."""
        if self._stop:
            return "stopped"
        if s.asked.deadline is not None:
            # The next call and the final checkpoint after it must both end before the deadline.
            keep_back = max(s.asked.reserve_s, 2 * self._slowest_save_s) + s.call_s
            if self.clock.now() + keep_back >= s.asked.deadline:
                return "deadline"
        return None

    def _run_call(self, s: _Slice, run_steps, iterator) -> float:
        """Returns the clock's monotonic() once one compiled call of steps is queued and the
        previous call's loss is read."""
        count = min(s.asked.steps_per_call, s.asked.target - self.step)
        every = s.asked.checkpoint_every_steps
        if every:
            count = min(count, every - self.step % every)  # a call ends on each step checkpoint
        call_started = self.clock.monotonic()
        loss = run_steps(iterator, count)
        # Reading the previous call's loss waits for that call only, so the device always has
        # the next call queued while the host never runs more than one call ahead.
        s.settle()
        s.pending = (loss, count)
        self.step += count
        now = self.clock.monotonic()
        s.call_s = now - call_started
        return now

    def _checkpoint_if_due(self, s: _Slice, now: float) -> None:
        """Writes a periodic checkpoint and reports it, if one is due before the target (where
        the final one follows anyway)."""
        every_steps, every_s = s.asked.checkpoint_every_steps, s.asked.checkpoint_every_s
        if callable(every_s):
            every_s = every_s()
        if every_steps and self.step % every_steps == 0:
            reason = "steps"
        elif every_s is not None and now - s.last_checkpoint >= every_s:
            reason = "time"
        else:
            return
        if self.step >= s.asked.target:
            return
        s.settle()
        s.checkpoint = self._with_figures(s, self.save_checkpoint(reason=reason), now)
        s.last_checkpoint = self.clock.monotonic()
        if s.asked.on_checkpoint:
            s.asked.on_checkpoint(s.checkpoint)

    def _heartbeat_if_due(self, s: _Slice, now: float) -> None:
        """Reports progress since the previous heartbeat, if one is due."""
        if s.asked.heartbeat_every_s is None or now - s.beat_started < s.asked.heartbeat_every_s:
            return
        s.settle()
        if s.asked.on_heartbeat:
            seconds = now - s.beat_started
            s.asked.on_heartbeat(Progress(
                self.step, s.asked.target, s.since_beat.mean(),
                (self.step - s.beat_step) * self.config.batch_size / seconds if seconds > 0 else None,
                now - s.started, self.learning_rate_at(),
            ))
        s.since_beat, s.beat_started, s.beat_step = _Tally(), now, self.step

    def _report_if_due(self, s: _Slice, now: float) -> None:
        """Tells a live display how training goes, if it is due (the previous call's loss is
        already read: no extra wait on the device)."""
        if s.asked.on_report is None or now - s.report_started < s.asked.report_every_s:
            return
        seconds = now - s.report_started
        s.asked.on_report(Progress(
            self.step, s.asked.target, s.since_report.mean(),
            (self.step - s.report_step) * self.config.batch_size / seconds if seconds > 0 else None,
            now - s.started,
        ))
        s.since_report, s.report_started, s.report_step = _Tally(), now, self.step

    def _final_checkpoint(self, s: _Slice, reason: str, now: float) -> None:
        """Writes the final checkpoint of a call that did steps and reports it."""
        if s.checkpoint is not None and s.checkpoint.step == self.step:
            # The last periodic checkpoint already holds the final state: report it again, as
            # final, rather than write the same weights twice.
            s.checkpoint = dataclasses.replace(s.checkpoint, final=True)
        else:
            s.checkpoint = self._with_figures(s, self.save_checkpoint(reason=reason, final=True), now)
        if s.asked.on_checkpoint:
            s.asked.on_checkpoint(s.checkpoint)

    def _with_figures(self, s: _Slice, info: CheckpointInfo, now: float) -> CheckpointInfo:
        """Returns `info` with the mean loss since the previous checkpoint and this call's speed;
        the next checkpoint's loss counts from here."""
        seconds, steps = now - s.started, self.step - s.start_step
        info = dataclasses.replace(
            info, loss=s.since_checkpoint.mean(),
            patches_per_second=steps * self.config.batch_size / seconds
            if seconds > 0 and steps > 0 else None)
        s.since_checkpoint = _Tally()
        return info

    def evaluate(self, images, names=None, pictures=None):
        """Returns PSNR/SSIM of the model and of bicubic on HR RGB images (see metrics.evaluate)."""
        from shardrun.train.metrics import evaluate

        return evaluate(self.model, self.config.scale, self.config.channels,
                        self.model_config.input_kind, images, names, pictures)


def keras_loss_scale_initial() -> dict[str, float]:
    """Returns the initial values of a fresh LossScaleOptimizer's own variables, by name."""
    import keras

    probe = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
    probe.build([keras.Variable(np.zeros(1, np.float32))])
    inner = {id(v) for v in probe.inner_optimizer.variables}
    return {v.path.rsplit("/", 1)[-1]: float(v.numpy()) for v in probe.variables if id(v) not in inner}

"""The optimiser, its learning-rate schedule and the training loss, built from a run's settings.

The schedule is `schedule.LrSchedule` computed in TensorFlow from the optimiser's iteration
count, which the checkpoint restores: the rate of every step is a pure function of the global
step, so a resume at any step is exact. It is computed in float64 and rounded once to float32,
so it agrees with `LrSchedule.at` to float32 rounding (cosine: to the last bit of `cos`).
"""

from __future__ import annotations

from typing import Any

from shardrun.train.schedule import LrSchedule

LOSSES = ("mse", "l1", "charbonnier")
# Charbonnier's ε (sqrt(d² + ε²)), as LapSRN (Lai et al. 2017) uses it.
CHARBONNIER_EPSILON = 1e-3


def keras_schedule(schedule: LrSchedule):
    """Returns the learning rate Adam is built with: a float for a constant rate (the optimiser
    keeps it as a variable, as before schedules existed), else a Keras LearningRateSchedule."""
    import keras
    import tensorflow as tf

    if schedule.kind == "constant":
        return schedule.base

    class _Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            s = tf.cast(step, tf.float64)
            base = tf.constant(schedule.base, tf.float64)
            if schedule.kind == "step":
                passed = tf.zeros((), tf.float64)
                for milestone in schedule.milestones:
                    passed += tf.cast(s >= milestone, tf.float64)
                rate = base * tf.pow(tf.constant(schedule.factor, tf.float64), passed)
            else:
                span = float(max(1, schedule.total_steps - schedule.warmup - 1))
                progress = tf.minimum(tf.constant(1.0, tf.float64), (s - schedule.warmup) / span)
                rate = schedule.min_lr + (schedule.base - schedule.min_lr) * 0.5 * (
                    1.0 + tf.cos(tf.constant(3.141592653589793, tf.float64) * progress))
            if schedule.warmup:
                rate = tf.where(s < schedule.warmup, base * (s + 1.0) / schedule.warmup, rate)
            return tf.cast(rate, tf.float32)

        def get_config(self) -> dict[str, Any]:
            return schedule.settings()

    return _Schedule()


def make_optimizer(schedule: LrSchedule, beta_1: float, clip_norm: float | None):
    """Returns Adam on the schedule; `clip_norm` clips the gradients by their global norm."""
    import keras

    return keras.optimizers.Adam(keras_schedule(schedule), beta_1=beta_1,
                                 global_clipnorm=None if clip_norm is None else float(clip_norm))


def loss_function(name: str):
    """Returns the loss (output, target) -> scalar tensor: mean squared error, mean absolute
    error, or Charbonnier's mean of sqrt(d² + ε²)."""
    import tensorflow as tf

    if name == "mse":
        return lambda output, target: tf.reduce_mean(tf.square(output - target))
    if name == "l1":
        return lambda output, target: tf.reduce_mean(tf.abs(output - target))
    if name == "charbonnier":
        eps2 = CHARBONNIER_EPSILON ** 2
        return lambda output, target: tf.reduce_mean(tf.sqrt(tf.square(output - target) + eps2))
    raise ValueError(f"loss={name!r} must be one of {', '.join(LOSSES)}")

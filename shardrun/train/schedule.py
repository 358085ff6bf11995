"""How many optimisation steps a run has, and its learning rate at each; shared by the planner,
the data pipeline and the trainer.

Kept free of TensorFlow so that planning never imports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def steps_per_epoch(num_images: int, patches_per_image: int, batch_size: int) -> int:
    """Returns the steps in one epoch: every image contributes `patches_per_image` patches."""
    if num_images <= 0 or patches_per_image <= 0 or batch_size <= 0:
        raise ValueError(
            f"steps_per_epoch needs positive counts, got num_images={num_images}, "
            f"patches_per_image={patches_per_image}, batch_size={batch_size}"
        )
    return math.ceil(num_images * patches_per_image / batch_size)


def total_steps(num_images: int, patches_per_image: int, batch_size: int, epochs: int) -> int:
    """Returns the steps of a whole run of `epochs` epochs."""
    return epochs * steps_per_epoch(num_images, patches_per_image, batch_size)


# -- learning-rate schedules ---------------------------------------------------------------------

SCHEDULE_KINDS = ("constant", "step", "cosine")


@dataclass(frozen=True)
class LrSchedule:
    """A run's learning rate as a pure function of the global step (`at`), so that a resume at
    any step continues with exactly the rate training straight through would have used.

    - constant: `base` at every step;
    - step: `base × factor^k` from the k-th milestone (a global step) on;
    - cosine: from `base` down to `min_lr` along half a cosine over the run's steps after the
      warm-up, reaching `min_lr` at the run's last step.
    A linear warm-up of `warmup` steps (step and cosine) rises to `base` at step `warmup - 1`:
    step s < warmup trains at `base × (s + 1) / warmup`, so the first step never has rate 0.
    """

    kind: str
    base: float
    total_steps: int
    milestones: tuple[int, ...] = ()
    factor: float = 0.5
    warmup: int = 0
    min_lr: float = 0.0

    def at(self, step: int) -> float:
        """Returns the learning rate of the step with global index `step` (0 is the first)."""
        if self.kind == "constant":
            return float(self.base)
        if step < self.warmup:
            return self.base * (step + 1) / self.warmup
        if self.kind == "step":
            passed = sum(1 for m in self.milestones if step >= m)
            return self.base * self.factor ** passed
        progress = (step - self.warmup) / max(1, self.total_steps - self.warmup - 1)
        return self.min_lr + (self.base - self.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def settings(self) -> dict:
        """Returns the schedule as plain values with every step resolved (checkpoints record it)."""
        return {"kind": self.kind, "base": self.base, "total_steps": self.total_steps,
                "milestones": list(self.milestones), "factor": self.factor, "warmup": self.warmup,
                "min_lr": self.min_lr}


class ScheduleError(ValueError):
    """A schedule that does not fit its run; `problems` names each key, value and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def lr_schedule(learning_rate: float, schedule: Mapping[str, Any] | None, steps_per_epoch: int,
                total_steps: int) -> LrSchedule:
    """Returns the run's schedule, milestones and warm-up in global steps; raises ScheduleError
    naming every setting that does not fit a run of `total_steps` steps.

    `schedule` is the job file's `[runs.schedule]` table as plain values (types and kinds are
    checked with the job file; here what needs the run's length).
    """
    s = dict(schedule or {})
    kind = s.get("kind") or "constant"
    problems = []
    if kind not in SCHEDULE_KINDS:
        problems.append(f"schedule.kind = {kind!r}: must be one of {', '.join(map(repr, SCHEDULE_KINDS))}")
        raise ScheduleError(problems)
    if kind == "constant":
        return LrSchedule("constant", float(learning_rate), total_steps)
    per = steps_per_epoch if (s.get("milestones_in") or "epochs") == "epochs" else 1
    milestones = tuple(int(m) * per for m in s.get("milestones") or ())
    late = [m for m in s.get("milestones") or () if int(m) * per >= total_steps]
    if late:
        unit = "epochs" if per == steps_per_epoch else "steps"
        end = total_steps // per if unit == "epochs" else total_steps
        problems.append(f"schedule.milestones = {list(s.get('milestones'))}: {late[0]} is past the run's end; "
                        f"milestones (in {unit}) must be less than {end} ({total_steps} steps in all)")
    if s.get("warmup_epochs") is not None:
        warmup, key, value = int(s["warmup_epochs"]) * steps_per_epoch, "warmup_epochs", s["warmup_epochs"]
    else:
        warmup, key, value = int(s.get("warmup_steps") or 0), "warmup_steps", s.get("warmup_steps")
    if warmup >= total_steps:
        problems.append(f"schedule.{key} = {value}: a warm-up of {warmup} steps is as long as the run or "
                        f"longer; it must be less than the run's {total_steps} steps")
    min_lr = float(s.get("min_lr") or 0.0)
    if kind == "cosine" and min_lr >= learning_rate:
        problems.append(f"schedule.min_lr = {min_lr:g}: must be less than learning_rate ({learning_rate:g})")
    if problems:
        raise ScheduleError(problems)
    return LrSchedule(kind, float(learning_rate), total_steps, milestones,
                      float(s.get("factor", 0.5)), warmup, min_lr)

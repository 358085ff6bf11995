"""The TensorBoard view of the ledger, as numbers: each run's history rows in, scalar points out.

Pure: no I/O. A point is (run, tag, step, value, wall time), the wall time being the store's
server time of the event it came from (never the clock of the machine running status, which is
not the clock any worker read). The history is the fold's downsampled one (ledger/summaries.py:
HISTORY_POINTS step buckets per run), so a loss or throughput point is the mean over its bucket,
placed at the bucket's latest step; a validation point is the bucket's latest validation, at
its own step.
"""

from __future__ import annotations

from dataclasses import dataclass

LOSS = "train/loss"
THROUGHPUT = "train/patches_per_second"
PSNR, SSIM = "validation/psnr", "validation/ssim"
BICUBIC_PSNR, BICUBIC_SSIM = "validation/bicubic_psnr", "validation/bicubic_ssim"
GAIN = "validation/psnr_gain_db"
# No learning-rate tag: the trainer's rate is the run's constant `learning_rate` and no event
# reports a per-step rate, so the ledger holds nothing to plot (docs/status.md says so).
TAGS = (LOSS, THROUGHPUT, PSNR, SSIM, BICUBIC_PSNR, BICUBIC_SSIM, GAIN)


@dataclass(frozen=True)
class Scalar:
    run: str
    tag: str
    step: int
    value: float
    wall_time: float  # the store's server time of the event (seconds since the epoch)


def history_scalars(run: str, history: list[dict]) -> list[Scalar]:
    """Returns a run's points from its ledger history rows (Ledger.history), in (tag, step) order."""
    points: list[Scalar] = []
    for h in history:
        step, t = h["step_max"], h["time_last"]
        if h.get("loss_n"):
            points.append(Scalar(run, LOSS, step, h["loss_sum"] / h["loss_n"], t))
        if h.get("pps_n"):
            points.append(Scalar(run, THROUGHPUT, step, h["pps_sum"] / h["pps_n"], t))
        if h.get("val_step") is not None and h.get("psnr") is not None:
            vstep, vt = h["val_step"], h.get("val_time") or t
            points += [Scalar(run, PSNR, vstep, h["psnr"], vt), Scalar(run, SSIM, vstep, h["ssim"], vt),
                       Scalar(run, BICUBIC_PSNR, vstep, h["bicubic_psnr"], vt),
                       Scalar(run, BICUBIC_SSIM, vstep, h["bicubic_ssim"], vt),
                       Scalar(run, GAIN, vstep, h["psnr"] - h["bicubic_psnr"], vt)]
    return sorted(points, key=lambda p: (p.tag, p.step))


def new_scalars(points: list[Scalar], written: dict[str, dict[str, int]]) -> list[Scalar]:
    """Returns the points after the last step `written` records for their run and tag, in step order.

    TensorBoard cannot replace a point, and a point at or before a step it already holds reads as
    a restart (it drops the later ones), so only steps past the last written one are new; a
    bucket the fold revised after it was written keeps its first value there.
    """
    fresh = [p for p in points if p.step > written.get(p.run, {}).get(p.tag, -1)]
    return sorted(fresh, key=lambda p: (p.run, p.step, p.tag))


def advanced(written: dict[str, dict[str, int]], points: list[Scalar]) -> dict[str, dict[str, int]]:
    """Returns `written` moved on to the last step of `points` per run and tag (a new dict)."""
    out = {run: dict(tags) for run, tags in written.items()}
    for p in points:
        tags = out.setdefault(p.run, {})
        tags[p.tag] = max(p.step, tags.get(p.tag, -1))
    return out

"""PSNR and SSIM as super-resolution papers report them: on BT.601 luma, with `scale` pixels
shaved from every border, SSIM with an 11×11 Gaussian window (σ = 1.5) — and the same numbers for
plain bicubic enlargement, the baseline a network must beat.

Images are float arrays in [0, 1], shape (H, W), (H, W, 1) (already luma) or (H, W, 3) (RGB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shardrun.train.data import Y_OFFSET, Y_WEIGHTS

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def luma(image: np.ndarray) -> np.ndarray:
    """Returns the (H, W) BT.601 luma of an RGB image, or the single channel of a luma image."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        return image
    if image.shape[-1] == 1:
        return image[..., 0]
    if image.shape[-1] == 3:
        return image @ Y_WEIGHTS + Y_OFFSET
    raise ValueError(f"image has shape {image.shape}; expected (H, W), (H, W, 1) or (H, W, 3)")


def _prepare(reference, estimate, scale: int) -> tuple[np.ndarray, np.ndarray]:
    ref, est = luma(reference), luma(estimate)
    if ref.shape != est.shape:
        raise ValueError(f"images differ in size: reference {ref.shape}, estimate {est.shape}")
    if scale > 0:
        ref, est = ref[scale:-scale, scale:-scale], est[scale:-scale, scale:-scale]
    if min(ref.shape) < 1:
        raise ValueError(f"nothing is left of a {reference.shape} image after shaving {scale}")
    return ref, est


def psnr(reference, estimate, scale: int, data_range: float = 1.0) -> float:
    """Returns the PSNR in dB on luma with `scale` border pixels shaved (inf when identical)."""
    ref, est = _prepare(reference, estimate, scale)
    mse = float(np.mean((ref - est) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


# The least MSE a per-image PSNR is computed from: 100 dB, so a crop that is nearly flat (a black
# retina border) reads as "perfect", not as 168 dB, and every score is a finite number.
MSE_FLOOR = 1e-10


def mse(reference, estimate, scale: int) -> float:
    """Returns the mean squared error on luma with `scale` border pixels shaved."""
    ref, est = _prepare(reference, estimate, scale)
    return float(np.mean((ref - est) ** 2))


def pooled_psnr(mses: Sequence[float], data_range: float = 1.0) -> float:
    """Returns the PSNR of the images' mean MSE: each image weighs the same, and one scored nearly
    perfectly (MSE near 0) adds nearly nothing, so no image can dominate the figure the way it
    dominates a mean of per-image PSNRs (a 168 dB crop lifts a mean of four by 35 dB)."""
    mean = float(np.mean(mses))
    return 10.0 * np.log10(data_range**2 / max(mean, MSE_FLOOR))


def floored_psnr(mse_value: float, data_range: float = 1.0) -> float:
    """Returns one image's PSNR with its MSE floored at MSE_FLOOR (at most 100 dB)."""
    return float(10.0 * np.log10(data_range**2 / max(mse_value, MSE_FLOOR)))


def texture_crop(image: np.ndarray, side: int) -> tuple[int, int]:
    """Returns (top, left) of the `side`-pixel square of most texture: the cell of a half-side
    grid with the highest gradient energy on luma (ties: the first in raster order).

    Deterministic, and never the flat centre of an image that is mostly background."""
    y = luma(image)
    h, w = y.shape
    if h <= side and w <= side:
        return 0, 0
    energy = np.zeros_like(y)
    energy[:, 1:] += np.diff(y, axis=1) ** 2
    energy[1:, :] += np.diff(y, axis=0) ** 2
    total = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    stride = max(1, side // 2)
    tops = sorted({*range(0, max(1, h - side + 1), stride), max(0, h - side)})
    lefts = sorted({*range(0, max(1, w - side + 1), stride), max(0, w - side)})
    best, where = -1.0, (0, 0)
    for top in tops:
        for left in lefts:
            b, r = min(h, top + side), min(w, left + side)
            e = total[b, r] - total[top, r] - total[b, left] + total[top, left]
            if e > best + 1e-12:
                best, where = e, (top, left)
    return where


def _gaussian() -> np.ndarray:
    radius = SSIM_WINDOW // 2
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / SSIM_SIGMA) ** 2)
    return taps / taps.sum()


def _filter_valid(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    # A separable Gaussian, evaluated only where the whole window lies inside the image.
    view = np.lib.stride_tricks.sliding_window_view
    rows = view(image, len(taps), axis=0) @ taps
    return view(rows, len(taps), axis=1) @ taps


def ssim(reference, estimate, scale: int, data_range: float = 1.0) -> float:
    """Returns the mean SSIM on luma with `scale` border pixels shaved (Wang et al. 2004)."""
    ref, est = _prepare(reference, estimate, scale)
    if min(ref.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after shaving")
    taps = _gaussian()
    mu_x, mu_y = _filter_valid(ref, taps), _filter_valid(est, taps)
    var_x = _filter_valid(ref * ref, taps) - mu_x**2
    var_y = _filter_valid(est * est, taps) - mu_y**2
    cov = _filter_valid(ref * est, taps) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(index.mean())


@dataclass(frozen=True)
class ImageScore:
    """One image's scores: the network's and bicubic enlargement's."""

    name: str
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    mse: float | None = None  # on luma, border shaved: what pooled_psnr averages
    bicubic_mse: float | None = None


@dataclass(frozen=True)
class Evaluation:
    """Mean scores over a set of images, with the per-image ones."""

    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    images: tuple[ImageScore, ...]

    @property
    def gain_db(self) -> float:
        """Returns how many dB the network's mean PSNR beats bicubic by."""
        return self.psnr - self.bicubic_psnr


def evaluate(
    model,
    scale: int,
    channels: int,
    input_kind: str,
    images: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    pictures: list | None = None,
) -> Evaluation:
    """Returns the network's and bicubic's PSNR/SSIM on HR RGB images (float, [0, 1]).

    Each image is degraded exactly as in training (data.degrade), enlarged by the model and by
    bicubic interpolation, and both are scored against the HR image on luma. The means are the
    SR literature's (of per-image PSNRs); see pooled_psnr for a figure no image dominates.
    `pictures`, if given, receives (bicubic, network, original) arrays per image, in [0, 1].
    """
    import tensorflow as tf

    from shardrun.train.data import degrade, to_channels

    scores = []
    for i, rgb in enumerate(images):
        hr_full = to_channels(tf.constant(rgb, tf.float32), channels)
        inputs, hr = degrade(hr_full, scale, input_kind)
        if input_kind == "upsampled":
            bicubic = inputs
        else:
            bicubic = tf.clip_by_value(
                tf.image.resize(inputs, tf.shape(hr)[:2], "bicubic"), 0.0, 1.0
            )
        sr = tf.clip_by_value(model(inputs[None], training=False)[0], 0.0, 1.0)
        hr, sr, bicubic = hr.numpy(), sr.numpy(), bicubic.numpy()
        if pictures is not None:
            pictures.append((bicubic, sr, hr))
        scores.append(ImageScore(
            names[i] if names else f"image {i}",
            psnr(hr, sr, scale), ssim(hr, sr, scale),
            psnr(hr, bicubic, scale), ssim(hr, bicubic, scale),
            mse(hr, sr, scale), mse(hr, bicubic, scale),
        ))
    mean = lambda field: float(np.mean([getattr(s, field) for s in scores]))  # noqa: E731
    return Evaluation(mean("psnr"), mean("ssim"), mean("bicubic_psnr"), mean("bicubic_ssim"),
                      tuple(scores))

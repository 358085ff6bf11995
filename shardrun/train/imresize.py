"""MATLAB-style bicubic `imresize`, the degradation of the SR literature, and BT.601 YCbCr.

MATLAB's `imresize(I, scale, 'bicubic')` (antialiasing on, its default) differs from Pillow's and
from TensorFlow's bicubic in ways that move PSNR by tenths of a dB:

- the kernel is Keys' cubic with a = -0.5, and when *shrinking* by a factor s it is stretched to
  `s·cubic(s·x)` (width 4/s), so it averages the pixels it drops instead of aliasing them;
- output pixel x (1-based) samples input position `u = x/scale + 0.5·(1 - 1/scale)`;
- taps falling outside the image are mirrored (symmetric padding: 1, 1, 2, ... not 0, 1, 2);
- each output pixel's weights are normalised to sum to one; the two dimensions are resized one
  after the other (rows, then columns).

For an integer enlargement the weights depend only on the output pixel's phase (x mod scale), and
they are computed from the phase alone — so enlarging a crop gives bit for bit the pixels of
enlarging the whole image, away from the crop's edges (what tiled upscaling relies on).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

KERNEL_WIDTH = 4.0  # Keys' cubic is non-zero on (-2, 2)

# MATLAB's rgb2ycbcr for RGB in [0, 1]: Y in [16, 235]/255, Cb and Cr in [16, 240]/255 (BT.601).
YCBCR_MATRIX = np.array([[65.481, 128.553, 24.966],
                         [-37.797, -74.203, 112.0],
                         [112.0, -93.786, -18.214]]) / 255.0
YCBCR_OFFSET = np.array([16.0, 128.0, 128.0]) / 255.0


def cubic(x: np.ndarray) -> np.ndarray:
    """Returns Keys' cubic convolution kernel (a = -0.5) at `x`, as MATLAB's imresize defines it."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def contributions(in_len: int, out_len: int, scale: float, antialias: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (weights, indices), each (out_len, taps): output pixel i is
    `sum_j weights[i, j] * input[indices[i, j]]` (0-based indices, mirrored at the edges)."""
    shrink = scale < 1 and antialias
    width = KERNEL_WIDTH / scale if shrink else KERNEL_WIDTH
    taps = int(np.ceil(width)) + 2
    x = np.arange(out_len)
    factor = Fraction(scale).limit_denominator(1000)
    if factor.denominator == 1 and factor.numerator >= 1:
        # Integer enlargement: u = q + (p + 0.5)/s + 0.5 with x = s·q + p (0-based), so the
        # fractional geometry comes from the phase p alone and every crop gets the same weights.
        s = factor.numerator
        q, p = np.divmod(x, s)
        phase_u = (np.arange(s) + 0.5) / s + 0.5
        phase_left = np.floor(phase_u - width / 2).astype(np.int64)
        offsets = phase_left[:, None] + np.arange(taps)
        phase_w = cubic(phase_u[:, None] - offsets)
        phase_w = phase_w / phase_w.sum(axis=1, keepdims=True)
        weights = phase_w[p]
        indices = q[:, None] + offsets[p] - 1  # to 0-based
    else:
        u = (x + 1) / scale + 0.5 * (1 - 1 / scale)
        left = np.floor(u - width / 2).astype(np.int64)
        indices = left[:, None] + np.arange(taps)  # 1-based
        distance = u[:, None] - indices
        weights = scale * cubic(scale * distance) if shrink else cubic(distance)
        weights = weights / weights.sum(axis=1, keepdims=True)
        indices = indices - 1
    # Mirror out-of-range taps: -1 -> 0, -2 -> 1, in_len -> in_len - 1, ...
    period = 2 * in_len
    indices = np.mod(indices, period)
    indices = np.where(indices >= in_len, period - 1 - indices, indices)
    return weights, indices


def _resize_axis(image: np.ndarray, out_len: int, scale: float, axis: int, antialias: bool) -> np.ndarray:
    weights, indices = contributions(image.shape[axis], out_len, scale, antialias)
    moved = np.moveaxis(image, axis, 0)
    out = np.zeros((out_len,) + moved.shape[1:], dtype=np.float64)
    shape = (out_len,) + (1,) * (moved.ndim - 1)
    for j in range(weights.shape[1]):  # taps in a fixed order: the same sum for every crop
        out += weights[:, j].reshape(shape) * moved[indices[:, j]]
    return np.moveaxis(out, 0, axis)


def imresize(image: np.ndarray, scale: float | None = None, size: tuple[int, int] | None = None,
             antialias: bool = True) -> np.ndarray:
    """Returns the image (H, W) or (H, W, C) resized by `scale` (or to `size` = (h, w)) with
    MATLAB's bicubic imresize, as float64 (no clipping, no rounding)."""
    image = np.asarray(image, dtype=np.float64)
    height, width = image.shape[:2]
    if size is None:
        if scale is None or scale <= 0:
            raise ValueError(f"imresize needs a positive scale or a size, got scale={scale!r}")
        size = (int(np.ceil(height * scale)), int(np.ceil(width * scale)))
        scales = (scale, scale)
    else:
        scales = (size[0] / height, size[1] / width)
    out = _resize_axis(image, size[0], scales[0], 0, antialias)
    return _resize_axis(out, size[1], scales[1], 1, antialias)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Returns BT.601 YCbCr (MATLAB's rgb2ycbcr) of RGB floats in [0, 1], as floats in [0, 1]."""
    return np.asarray(rgb, dtype=np.float64) @ YCBCR_MATRIX.T + YCBCR_OFFSET


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Returns RGB floats (unclipped) of BT.601 YCbCr floats: the inverse of rgb_to_ycbcr."""
    return (np.asarray(ycbcr, dtype=np.float64) - YCBCR_OFFSET) @ np.linalg.inv(YCBCR_MATRIX).T

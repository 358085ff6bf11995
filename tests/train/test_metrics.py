"""PSNR/SSIM on luma with the border shaved, checked against scikit-image's implementations."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from shardrun.train.metrics import evaluate, luma, psnr, ssim


def reference_y(rgb: np.ndarray, shave: int) -> np.ndarray:
    y = rgb2ycbcr(rgb)[..., 0] / 255.0  # BT.601 Y in [16, 235] / 255
    return y[shave:-shave, shave:-shave]


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)


def noisy_pair(seed: int, shape=(40, 52, 3), noise=0.05):
    rng = np.random.default_rng(seed)
    clean = rng.random(shape)
    return clean, np.clip(clean + rng.normal(0, noise, shape), 0, 1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([2, 3, 4]),
       noise=st.floats(0.001, 0.3))
def test_psnr_and_ssim_match_scikit_image_on_rgb(seed, scale, noise):
    hr, sr = noisy_pair(seed, noise=noise)
    ref, est = reference_y(hr, scale), reference_y(sr, scale)
    assert psnr(hr, sr, scale) == pytest.approx(peak_signal_noise_ratio(ref, est, data_range=1.0), abs=1e-9)
    assert ssim(hr, sr, scale) == pytest.approx(reference_ssim(ref, est), abs=1e-9)


def test_luma_images_are_scored_as_they_are():
    hr, sr = noisy_pair(1, shape=(30, 30, 1))
    assert psnr(hr, sr, 3) == pytest.approx(
        peak_signal_noise_ratio(hr[3:-3, 3:-3, 0], sr[3:-3, 3:-3, 0], data_range=1.0))
    assert ssim(hr[..., 0], sr[..., 0], 3) == pytest.approx(reference_ssim(hr[3:-3, 3:-3, 0], sr[3:-3, 3:-3, 0]))
    np.testing.assert_allclose(luma(hr), hr[..., 0])


def test_the_border_is_shaved_before_scoring():
    hr, _ = noisy_pair(2, shape=(32, 32, 1))
    broken = hr.copy()
    broken[:2] = 1 - broken[:2]  # damage only the two top rows
    assert psnr(hr, broken, 2) == float("inf") and ssim(hr, broken, 2) == pytest.approx(1.0)
    assert psnr(hr, broken, 1) < 30


def test_mismatched_or_too_small_images_are_refused():
    with pytest.raises(ValueError, match="differ in size"):
        psnr(np.zeros((20, 20)), np.zeros((20, 22)), 2)
    with pytest.raises(ValueError, match="SSIM needs at least 11x11"):
        ssim(np.zeros((14, 14)), np.zeros((14, 14)), 2)
    with pytest.raises(ValueError, match=r"expected \(H, W\), \(H, W, 1\) or \(H, W, 3\)"):
        luma(np.zeros((4, 4, 2)))


def _bicubic_reference(rgb: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = rgb.shape[0] // scale * scale, rgb.shape[1] // scale * scale
    hr = rgb[:h, :w].astype(np.float32)
    low = np.clip(tf.image.resize(hr, [h // scale, w // scale], "bicubic", antialias=True), 0, 1)
    return hr, np.clip(tf.image.resize(low, [h, w], "bicubic").numpy(), 0, 1)


def test_evaluate_scores_the_network_and_bicubic_alike():
    rgb = [noisy_pair(s, shape=(41, 50, 3))[0] for s in (3, 4)]
    identity = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Identity()])
    # An "upsampled" model that returns its input is exactly bicubic.
    result = evaluate(identity, 2, 3, "upsampled", rgb, ["a", "b"])
    assert result.psnr == pytest.approx(result.bicubic_psnr) and result.gain_db == pytest.approx(0)
    hr, up = _bicubic_reference(rgb[0], 2)
    first = result.images[0]
    assert first.name == "a"
    assert first.bicubic_psnr == pytest.approx(
        peak_signal_noise_ratio(reference_y(hr, 2), reference_y(up, 2), data_range=1.0), abs=1e-4)
    assert first.bicubic_ssim == pytest.approx(
        reference_ssim(reference_y(hr, 2), reference_y(up, 2)), abs=1e-4)
    assert result.psnr == pytest.approx(np.mean([i.psnr for i in result.images]))
    # A "low" model enlarging by nearest neighbour scores worse than bicubic on Y.
    yy, xx = np.mgrid[0:48, 0:64] / 8.0
    smooth = np.stack([0.5 + 0.4 * np.sin(xx + k) * np.cos(yy) for k in range(3)], axis=-1)
    nearest = keras.Sequential([keras.Input((None, None, 1)), keras.layers.UpSampling2D(2)])
    worse = evaluate(nearest, 2, 1, "low", [smooth])
    assert worse.psnr < worse.bicubic_psnr - 3

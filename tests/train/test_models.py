"""The model registry: published parameter counts, fully convolutional shapes, argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from shardrun.errors import ShardrunError
from shardrun.train.models import (
    MODELS,
    ModelError,
    build_model,
    check_patch_size,
    count_parameters,
    create_model,
    model_names,
    resolve_model,
)


@pytest.mark.parametrize(
    "name, channels, options, expected",
    [
        # Dong et al. (SRCNN 9-1-5 / 9-5-5), and the DECUSR counts of Temiz & Bilge and of
        # Temiz, Bilge, Uygur 2019 (3 repeating blocks on RGB, their second network).
        ("srcnn-915", 1, {}, 8_129),
        ("srcnn-915", 3, {}, 20_099),
        ("srcnn-955", 1, {}, 57_281),
        ("decusr", 1, {"blocks": 4}, 39_265),
        ("decusr", 3, {"blocks": 4}, 40_995),
        ("decusr", 3, {"blocks": 3}, 28_739),
        # VDSR (Kim, Lee, Lee, CVPR 2016): 20 layers of 64 3x3 filters. The paper gives no count;
        # the comparison tables of LapSRN (Lai et al., CVPR 2017) and MemNet (Tai et al., ICCV
        # 2017) list 665K. By hand: 9*64+64 + 18*(9*64*64+64) + 9*64+1 = 665,921.
        ("vdsr", 1, {}, 665_921),
        # EDSR baseline (Lim et al., CVPRW 2017), RGB x2: EDSR-PyTorch's README lists
        # EDSR_baseline_x2 at 1.37M. By hand: head 1,792 + 16 blocks * 2 * 36,928 + 36,928 +
        # upsampler 9*64*256+256 = 147,712 + tail 1,731 = 1,369,859.
        ("edsr-baseline", 3, {}, 1_369_859),
    ],
)
def test_parameter_counts_match_the_published_networks(name, channels, options, expected):
    assert count_parameters(resolve_model(name, 2, channels, options)) == expected


def test_edsr_baseline_x4_is_the_papers_1_5m_and_res_scale_is_a_factor():
    # Lim et al. Table 1 gives the baseline (x4, two x2 sub-pixel stages) as 1.5M parameters.
    assert count_parameters(resolve_model("edsr-baseline", 4, 3)) == 1_517_571
    assert resolve_model("edsr-baseline", 2, 3, {"res_scale": 0.1}).options["res_scale"] == 0.1
    with pytest.raises(ModelError, match=r"option res_scale=0 of edsr-baseline must be a positive number"):
        resolve_model("edsr-baseline", 2, 3, {"res_scale": 0})
    # The scaling is in the network: the same seed with another res_scale gives other outputs.
    x = np.random.default_rng(0).random((1, 6, 6, 3)).astype(np.float32)
    small = {"blocks": 2, "filters": 4}
    outs = [np.asarray(build_model(resolve_model("edsr-baseline", 2, 3, {**small, "res_scale": r}), seed=1)(x))
            for r in (1.0, 0.1)]
    assert float(np.abs(outs[0] - outs[1]).max()) > 1e-6


def test_vdsr_learns_the_residual_of_its_input():
    model = create_model("vdsr", 2, 1, {"depth": 3, "filters": 4}, seed=0)
    for w in model.layers[-2].weights:  # the last convolution predicts a zero residual
        w.assign(np.zeros(w.shape, np.float32))
    x = np.random.default_rng(0).random((1, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(model(x)), x)


def test_losses_default_per_model():
    assert MODELS["edsr-baseline"].loss == "l1"
    assert {spec.loss for name, spec in MODELS.items() if name != "edsr-baseline"} == {"mse"}


def test_fsrcnn_has_the_papers_12464_filter_weights():
    # FSRCNN(56, 12, 4) is published with 12,464 parameters counting convolution weights only.
    model = create_model("fsrcnn", 3, 1)
    kernels = sum(int(np.prod(w.shape)) for w in model.trainable_weights if len(w.shape) == 4)
    assert kernels == 12_464


def test_parameter_count_does_not_depend_on_scale_except_for_espcn():
    counts = {s: count_parameters(resolve_model("decusr", s, 1)) for s in (2, 4)}
    assert counts[2] == counts[4]
    espcn = {s: count_parameters(resolve_model("espcn", s, 1)) for s in (2, 3)}
    # The sub-pixel layer has channels * scale^2 filters of 3x3x32, plus their biases.
    assert espcn[3] - espcn[2] == (9 - 4) * (3 * 3 * 32 + 1)


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("channels", [1, 3])
def test_every_model_is_fully_convolutional_and_enlarges_by_the_scale(name, channels):
    scale = MODELS[name].scales[-1]
    config = resolve_model(name, scale, channels)
    model = build_model(config, seed=0)
    assert tuple(model.input_shape) == (None, None, None, channels)
    for height, width in ((8, 8), (5, 7)):
        side = (height, width) if config.input_kind == "low" else (height * scale, width * scale)
        out = model(np.zeros((2, *side, channels), np.float32))
        assert tuple(out.shape) == (2, height * scale, width * scale, channels)


def test_a_seed_fixes_the_initial_weights():
    config = resolve_model("espcn", 2, 1, {"n1": 4, "n2": 4})
    first, again, other = (build_model(config, seed=s) for s in (7, 7, 8))
    for a, b in zip(first.weights, again.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(first.weights, other.weights))


def test_options_change_the_network():
    small = count_parameters(resolve_model("decusr", 2, 1, {"blocks": 1, "filters": 4}))
    assert small < count_parameters(resolve_model("decusr", 2, 1))
    config = resolve_model("fsrcnn", 2, 1, {"m": 2})
    assert dict(config.options) == {"d": 56, "s": 12, "m": 2}


def test_unknown_model_names_the_value_and_the_choices():
    with pytest.raises(ModelError, match=r"model='srgan' is not a known model.*decusr"):
        resolve_model("srgan", 2, 1)


def test_unknown_option_names_it_and_the_allowed_ones():
    with pytest.raises(ModelError, match=r"option 'depth' is not known to decusr; allowed: blocks, filters"):
        resolve_model("decusr", 2, 1, {"depth": 3})


@pytest.mark.parametrize("value", [0, -1, 2.5, "4", True])
def test_option_values_must_be_positive_integers(value):
    with pytest.raises(ModelError, match=rf"option blocks={value!r} of decusr must be a positive"):
        resolve_model("decusr", 2, 1, {"blocks": value})


def test_unsupported_scale_lists_the_supported_ones():
    with pytest.raises(ModelError, match=r"scale=8 is not supported by srcnn-915; supported: 2, 3, 4"):
        resolve_model("srcnn-915", 8, 1)
    assert resolve_model("decusr", 8, 1).scale == 8


@pytest.mark.parametrize("channels", [0, 2, 4, "3"])
def test_channels_must_be_one_or_three(channels):
    with pytest.raises(ModelError, match=rf"channels={channels!r} must be 1 \(Y\) or 3 \(RGB\)"):
        resolve_model("espcn", 2, channels)


def test_every_problem_is_reported_at_once_on_one_line():
    with pytest.raises(ModelError) as caught:
        resolve_model("espcn", 5, 2, {"n3": 1})
    message = str(caught.value)
    assert "'n3'" in message and "scale=5" in message and "channels=2" in message
    assert "\n" not in message
    assert isinstance(caught.value, ShardrunError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("patch, scale", [(8, 4), (12, 4), (6, 2), (34, 3)])
def test_patch_too_small_or_not_a_multiple_of_the_scale(patch, scale):
    with pytest.raises(ModelError, match=rf"patch_size={patch} is too small or not a multiple of scale {scale}"):
        check_patch_size(patch, scale)


def test_patch_sizes_that_fit():
    for patch, scale in ((8, 2), (16, 4), (12, 3), (32, 8)):
        check_patch_size(patch, scale)

"""Super-resolution networks as factories of (scale, channels, options) returning Keras models.

Every model is fully convolutional: its input is `(None, None, C)`, so one model trains on patches
and evaluates on whole images. A model's `input_kind` says what it is fed:

- "upsampled": the low-resolution image bicubically enlarged to the output size (SRCNN);
- "low": the low-resolution image itself; the network enlarges it (FSRCNN, ESPCN, DECUSR).

TensorFlow is imported inside the builders so that listing names and validating options
(`resolve_model`) stays cheap for the planner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shardrun.errors import ShardrunError

CHANNELS = (1, 3)
# The smallest low-resolution patch side we train on: below it a 3x3 or 5x5 kernel sees mostly
# padding and the patch says little about the image.
MIN_LR_PATCH = 4


class ModelError(ShardrunError, ValueError):
    """A model name, option, scale, channel count or patch size that no model accepts; `problems`
    lists each one (the message joins them on one line)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems) if problems else [message]
        super().__init__(message)


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the registry: how to build a network and what it accepts."""

    name: str
    summary: str
    citation: str
    input_kind: str  # "upsampled" or "low"
    scales: tuple[int, ...]
    defaults: Mapping[str, int]
    build: Callable[..., Any] = field(repr=False)
    loss: str = "mse"  # the loss a run trains on unless it says otherwise


@dataclass(frozen=True)
class CustomNetwork:
    """A team's own network: `function` of the Python file at `path`, whose bytes hash to `sha256`."""

    file: str  # as the job file names it (messages, identity)
    path: str  # where it is on this machine
    function: str
    sha256: str
    build: Callable[..., Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class ModelConfig:
    """A model fully described: name, scale, channels and every option (defaults filled in)."""

    name: str
    scale: int
    channels: int
    options: Mapping[str, Any]
    network: CustomNetwork | None = None

    @property
    def spec(self) -> ModelSpec:
        if self.network is not None:
            return _custom_spec(self.name, self.network, self.scale)
        return MODELS[self.name]

    @property
    def input_kind(self) -> str:
        return self.spec.input_kind

    def identity(self) -> dict[str, Any]:
        """Returns a JSON-ready description that checkpoints store and compare."""
        identity = {
            "name": self.name,
            "scale": self.scale,
            "channels": self.channels,
            "options": dict(sorted(self.options.items())),
        }
        if self.network is not None:
            identity["sha256"] = self.network.sha256  # another file is another network
        return identity

    def describe(self) -> str:
        """Returns a one-line human description, e.g. `decusr (scale 2, 1 channel, blocks=4)`."""
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        noun = "channel" if self.channels == 1 else "channels"
        return f"{self.name} (scale {self.scale}, {self.channels} {noun}, {opts})"


class _Init:
    """Hands each layer its own seeded Glorot initializer, so a seed fixes the initial weights
    without touching Keras's global random state."""

    def __init__(self, seed: int | None):
        self.seed = seed
        self.count = 0

    def __call__(self):
        import keras

        if self.seed is None:
            return "glorot_uniform"
        self.count += 1
        return keras.initializers.GlorotUniform(seed=self.seed * 1009 + self.count)


def _conv(init: _Init, filters: int, kernel: int, activation=None, name=None):
    import keras

    return keras.layers.Conv2D(
        filters,
        kernel,
        padding="same",
        activation=activation,
        kernel_initializer=init(),
        name=name,
    )


def _srcnn(scale, channels, options, init, name):
    import keras

    # Dong et al. 2014/2016: patch extraction f1=9, non-linear mapping f2 (1 or 5), reconstruction
    # f3=5, on the bicubically enlarged image. "same" padding keeps output and target aligned.
    inputs = keras.Input((None, None, channels), name="upsampled")
    x = _conv(init, options["n1"], 9, "relu")(inputs)
    x = _conv(init, options["n2"], options["f2"], "relu")(x)
    outputs = _conv(init, channels, 5)(x)
    return keras.Model(inputs, outputs, name=name)


def _srcnn_915(scale, channels, options, init):
    return _srcnn(scale, channels, {**options, "f2": 1}, init, "srcnn-915")


def _srcnn_955(scale, channels, options, init):
    return _srcnn(scale, channels, {**options, "f2": 5}, init, "srcnn-955")


def _fsrcnn(scale, channels, options, init):
    import keras

    # Dong, Loy, Tang 2016, FSRCNN(d, s, m): feature extraction 5x5 d, shrinking 1x1 s, m mapping
    # layers 3x3 s, expanding 1x1 d, each followed by PReLU, then a 9x9 deconvolution of stride
    # `scale`. PReLU slopes are shared over space so the model takes any image size.
    d, s, m = options["d"], options["s"], options["m"]

    def prelu():
        return keras.layers.PReLU(shared_axes=[1, 2])

    inputs = keras.Input((None, None, channels), name="low")
    x = prelu()(_conv(init, d, 5)(inputs))
    x = prelu()(_conv(init, s, 1)(x))
    for _ in range(m):
        x = prelu()(_conv(init, s, 3)(x))
    x = prelu()(_conv(init, d, 1)(x))
    outputs = keras.layers.Conv2DTranspose(
        channels, 9, strides=scale, padding="same", kernel_initializer=init()
    )(x)
    return keras.Model(inputs, outputs, name="fsrcnn")


def _espcn(scale, channels, options, init):
    import keras
    import tensorflow as tf

    # Shi et al. 2016: (5, n1) and (3, n2) with tanh, then 3x3 to C*r^2 channels rearranged by a
    # sub-pixel shuffle (depth_to_space) into the r-times larger image.
    inputs = keras.Input((None, None, channels), name="low")
    x = _conv(init, options["n1"], 5, "tanh")(inputs)
    x = _conv(init, options["n2"], 3, "tanh")(x)
    x = _conv(init, channels * scale * scale, 3)(x)
    outputs = keras.layers.Lambda(
        lambda t: tf.nn.depth_to_space(t, scale), name="pixel_shuffle"
    )(x)
    return keras.Model(inputs, outputs, name="espcn")


def _decusr(scale, channels, options, init):
    import keras

    # Temiz & Bilge, DECUSR (authors' public definition, github.com/htemiz/DECUSR, Decusr.py):
    # a feature extraction block (three 3x3 and one 1x1 conv) on the low-resolution input, the
    # features and the input each enlarged by nearest-neighbour UpSampling2D (L_FUP, L_DUP), then
    # `blocks` repeating blocks (3x3, 3x3, 1x1), each fed the concatenation of both enlarged
    # tensors and every earlier block's output, and a final 3x3 conv. All activations are ReLU,
    # the last one included, as in the authors' code.
    f = options["filters"]
    inputs = keras.Input((None, None, channels), name="low")
    x = inputs
    for kernel in (3, 3, 3, 1):
        x = _conv(init, f, kernel, "relu")(x)
    feature_up = keras.layers.UpSampling2D(scale, name="feature_upsampling")(x)
    direct_up = keras.layers.UpSampling2D(scale, name="direct_upsampling")(inputs)
    dense = [feature_up, direct_up]
    block = None
    for _ in range(options["blocks"]):
        block = keras.layers.Concatenate()(dense)
        for kernel in (3, 3, 1):
            block = _conv(init, f, kernel, "relu")(block)
        dense.append(block)
    outputs = _conv(init, channels, 3, "relu")(block)
    return keras.Model(inputs, outputs, name="decusr")


def _vdsr(scale, channels, options, init):
    import keras

    # Kim, Lee, Lee, CVPR 2016 (VDSR): `depth` 3x3 convolutions of `filters` (20 of 64), ReLU
    # after all but the last, on the bicubically enlarged image; the network learns the residual,
    # which is added back to its input (the global skip).
    inputs = keras.Input((None, None, channels), name="upsampled")
    x = inputs
    for _ in range(options["depth"] - 1):
        x = _conv(init, options["filters"], 3, "relu")(x)
    residual = _conv(init, channels, 3)(x)
    outputs = keras.layers.Add(name="residual_learning")([inputs, residual])
    return keras.Model(inputs, outputs, name="vdsr")


def _edsr_baseline(scale, channels, options, init):
    import keras
    import tensorflow as tf

    # Lim, Son, Kim, Nah, Lee, CVPRW 2017 (EDSR), the baseline: a 3x3 head, `blocks` residual
    # blocks (3x3, ReLU, 3x3, scaled by `res_scale`, no batch normalisation), a 3x3 convolution
    # and a skip from the head, then sub-pixel upsampling (x2, x3: one 3x3 convolution to
    # filters*scale^2 and a shuffle; x4: two x2 stages) and a 3x3 convolution to the channels.
    # The authors' MeanShift (subtracting DIV2K's RGB mean) has no trainable weights and is left
    # out: inputs here are in [0, 1].
    f = options["filters"]

    def shuffle(factor, name):
        return keras.layers.Lambda(lambda t: tf.nn.depth_to_space(t, factor), name=name)

    inputs = keras.Input((None, None, channels), name="low")
    head = _conv(init, f, 3)(inputs)
    x = head
    for _ in range(options["blocks"]):
        y = _conv(init, f, 3, "relu")(x)
        y = _conv(init, f, 3)(y)
        if options["res_scale"] != 1.0:
            y = keras.layers.Rescaling(options["res_scale"])(y)
        x = keras.layers.Add()([x, y])
    x = keras.layers.Add()([head, _conv(init, f, 3)(x)])
    stages = [2, 2] if scale == 4 else [scale]
    for i, factor in enumerate(stages):
        x = shuffle(factor, f"pixel_shuffle_{i}")(_conv(init, f * factor * factor, 3)(x))
    outputs = _conv(init, channels, 3)(x)
    return keras.Model(inputs, outputs, name="edsr-baseline")


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "srcnn-915",
            "SRCNN 9-1-5: three convolutions on the bicubically enlarged image",
            "Dong, Loy, He, Tang 2014/2016 (SRCNN)",
            "upsampled",
            (2, 3, 4),
            {"n1": 64, "n2": 32},
            _srcnn_915,
        ),
        ModelSpec(
            "srcnn-955",
            "SRCNN 9-5-5: SRCNN with a 5x5 non-linear mapping layer",
            "Dong, Loy, He, Tang 2016 (SRCNN)",
            "upsampled",
            (2, 3, 4),
            {"n1": 64, "n2": 32},
            _srcnn_955,
        ),
        ModelSpec(
            "fsrcnn",
            "FSRCNN(d, s, m): hourglass network with a final deconvolution",
            "Dong, Loy, Tang 2016 (FSRCNN)",
            "low",
            (2, 3, 4),
            {"d": 56, "s": 12, "m": 4},
            _fsrcnn,
        ),
        ModelSpec(
            "espcn",
            "ESPCN: convolutions in low resolution and a sub-pixel shuffle",
            "Shi et al. 2016 (ESPCN)",
            "low",
            (2, 3, 4),
            {"n1": 64, "n2": 32},
            _espcn,
        ),
        ModelSpec(
            "decusr",
            "DECUSR: densely connected repeating blocks after in-network upsampling",
            "Temiz & Bilge 2018/2020 (DECUSR); github.com/htemiz/DECUSR",
            "low",
            (2, 3, 4, 8),
            {"blocks": 4, "filters": 16},
            _decusr,
        ),
        ModelSpec(
            "vdsr",
            "VDSR: 20 3x3 convolutions learning the residual of the bicubic enlargement",
            "Kim, Lee, Lee 2016 (VDSR)",
            "upsampled",
            (2, 3, 4),
            {"depth": 20, "filters": 64},
            _vdsr,
        ),
        ModelSpec(
            "edsr-baseline",
            "EDSR baseline: residual blocks without batch norm, sub-pixel upsampling",
            "Lim et al. 2017 (EDSR); the baseline of github.com/sanghyun-son/EDSR-PyTorch",
            "low",
            (2, 3, 4),
            {"blocks": 16, "filters": 64, "res_scale": 1.0},
            _edsr_baseline,
            loss="l1",
        ),
    )
}


CUSTOM_PREFIX = "file:"


def _custom_spec(name: str, network: CustomNetwork, scale: int) -> ModelSpec:
    def build(scale, channels, options, init):
        import keras

        # The file's own layers draw their initial weights from Keras's global generator: seeding
        # it makes every session that starts the run from scratch start from the same weights.
        if init.seed is not None:
            keras.utils.set_random_seed(init.seed)
        return network.build(scale, channels, **options)

    return ModelSpec(name, f"{network.function} of {network.file}", network.file, "low", (scale,), {}, build)


def load_network(file: str, path: str, function: str, sha256: str | None = None) -> CustomNetwork:
    """Returns the network function of a Python file, its bytes checked against `sha256` if given.

    Raises ModelError in one line naming the file and what is wrong (missing, another hash, does
    not import, no such function).
    """
    import hashlib
    import importlib.util

    try:
        data = open(path, "rb").read()
    except OSError as error:
        raise ModelError(f"network file {file}: cannot be read ({error.strerror or error})") from error
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ModelError(f"network file {file}: its sha256 is {digest}, but the plan recorded {sha256}")
    module_name = f"shardrun_network_{digest[:16]}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - any failure of the user's code is one line about it
        raise ModelError(f"network file {file} does not import: {type(error).__name__}: {error}") from error
    build = getattr(module, function, None)
    if not callable(build):
        raise ModelError(f"network file {file} has no function {function}(scale, channels, **options)")
    return CustomNetwork(file, str(path), function, digest, build)


def _custom_option_problems(network: CustomNetwork, options: Mapping[str, Any]) -> list[str]:
    import inspect

    try:
        parameters = inspect.signature(network.build).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return []
    taken = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][2:]
    unknown = sorted(set(options) - set(taken))
    if not unknown:
        return []
    return [f"option {', '.join(map(repr, unknown))} is not taken by {network.function} of {network.file}; "
            f"it takes: {', '.join(taken) or 'no options'}"]


def check_network(config: ModelConfig, model) -> None:
    """Returns nothing; raises ModelError when the built network does not take `(None, None, C)`
    or does not enlarge by the scale."""
    import numpy as np

    scale, channels = config.scale, config.channels
    where = f"{config.network.function}({scale}, {channels}) of {config.network.file}" if config.network \
        else config.describe()
    shape = tuple(getattr(model, "input_shape", ()) or ())
    if shape != (None, None, None, channels):
        raise ModelError(f"{where} takes input {shape[1:]}, but a network must take (None, None, {channels})")
    try:
        out = tuple(model(np.zeros((1, 6, 5, channels), np.float32)).shape)
    except Exception as error:  # noqa: BLE001
        raise ModelError(f"{where} fails on a 6x5 input: {type(error).__name__}: {error}") from error
    if out != (1, 6 * scale, 5 * scale, channels):
        raise ModelError(f"{where} turns a 6x5 input into {out[1]}x{out[2]} with {out[-1]} channel(s); "
                         f"scale {scale} needs {6 * scale}x{5 * scale} with {channels}")


def model_names() -> list[str]:
    """Returns the registered model names in registry order."""
    return list(MODELS)


def resolve_model(
    name: str, scale: int, channels: int, options: Mapping[str, Any] | None = None,
    network_path: str | None = None, network_sha256: str | None = None,
) -> ModelConfig:
    """Returns the validated model description with defaults filled in.

    `file:PATH:FUNCTION` names a network of the team's own, read from `network_path` (checked
    against `network_sha256` if given).
    Raises ModelError naming every problem at once (unknown name, option, bad value, scale,
    channels).
    """
    if isinstance(name, str) and name.startswith(CUSTOM_PREFIX):
        file, _, function = name[len(CUSTOM_PREFIX):].rpartition(":")
        network = load_network(file, network_path or file, function, network_sha256)
        problems = _custom_option_problems(network, options or {})
        if isinstance(channels, bool) or channels not in CHANNELS:
            problems.append(f"channels={channels!r} must be 1 (Y) or 3 (RGB)")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
            problems.append(f"scale={scale!r} must be an integer of 2 or more")
        if problems:
            raise ModelError("; ".join(problems), problems)
        return ModelConfig(name, scale, channels, dict(options or {}), network)
    if name not in MODELS:
        raise ModelError(
            f"model={name!r} is not a known model; choose one of: {', '.join(MODELS)}"
        )
    spec = MODELS[name]
    options = dict(options or {})
    problems = []
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        allowed = ", ".join(spec.defaults) or "none"
        problems.append(
            f"option {', '.join(map(repr, unknown))} is not known to {name}; allowed: {allowed}"
        )
    resolved = dict(spec.defaults)
    for key, default in spec.defaults.items():
        if key in options:
            value = options[key]
            if isinstance(default, float):  # a factor (EDSR's residual scaling)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    problems.append(f"option {key}={value!r} of {name} must be a positive number")
                else:
                    resolved[key] = float(value)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"option {key}={value!r} of {name} must be a positive integer")
            else:
                resolved[key] = value
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in spec.scales:
        problems.append(
            f"scale={scale!r} is not supported by {name}; supported: "
            f"{', '.join(map(str, spec.scales))}"
        )
    if isinstance(channels, bool) or channels not in CHANNELS:
        problems.append(f"channels={channels!r} must be 1 (Y) or 3 (RGB)")
    if problems:
        raise ModelError("; ".join(problems), problems)
    return ModelConfig(name, scale, channels, resolved)


def check_patch_size(patch_size: int, scale: int) -> None:
    """Returns nothing; raises ModelError when `patch_size` (HR side) cannot be used at `scale`."""
    smallest = MIN_LR_PATCH * scale
    if (
        isinstance(patch_size, bool)
        or not isinstance(patch_size, int)
        or patch_size < smallest
        or patch_size % scale
    ):
        raise ModelError(
            f"patch_size={patch_size!r} is too small or not a multiple of scale {scale}: the "
            f"HR patch must be a multiple of {scale} and at least {smallest} pixels "
            f"({MIN_LR_PATCH} low-resolution pixels)"
        )


def build_model(config: ModelConfig, seed: int | None = None):
    """Returns a new Keras model for `config`; `seed` fixes its initial weights."""
    return config.spec.build(config.scale, config.channels, dict(config.options), _Init(seed))


def create_model(
    name: str,
    scale: int,
    channels: int = 1,
    options: Mapping[str, Any] | None = None,
    seed: int | None = None,
):
    """Returns a new Keras model by name, after validating every argument."""
    return build_model(resolve_model(name, scale, channels, options), seed)


def count_parameters(config: ModelConfig) -> int:
    """Returns the number of trainable parameters of the model `config` describes."""
    model = build_model(config, seed=0)
    return int(sum(int(w.numpy().size) for w in model.trainable_weights))

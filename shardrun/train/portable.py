"""A checkpoint's network as a Keras model that plain Keras can load: built-in layers only.

`build_model` is what the trainer trains; every model it builds is made of built-in Keras layers
except ESPCN's sub-pixel shuffle, a `Lambda` around `tf.nn.depth_to_space` — a Python function
that `keras.saving.load_model` will not deserialise (safe mode) and that no other runtime knows.
The portable model replaces it by a fixed, non-trainable `Conv2DTranspose` (kernel r×r, stride r)
whose kernel is a permutation: each output pixel receives exactly one input value times 1.0 plus
zeros, so the result is the shuffle's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shardrun.train.models import ModelConfig, build_model


def shuffle_kernel(scale: int, channels: int) -> np.ndarray:
    """Returns the (r, r, C, r·r·C) transposed-convolution kernel that does depth_to_space(r)."""
    kernel = np.zeros((scale, scale, channels, scale * scale * channels), np.float32)
    for i in range(scale):
        for j in range(scale):
            for c in range(channels):
                kernel[i, j, c, (i * scale + j) * channels + c] = 1.0
    return kernel


def _replace_lambdas(model, scale: int):
    import keras

    # Rebuild the functional graph layer by layer, reusing every layer (and so its weights) but
    # the shuffle. Our models are chains (ESPCN is), so following `model.layers` in order is enough.
    inputs = keras.Input(model.input.shape[1:], name=model.input.name.split(":")[0]
                         if hasattr(model.input, "name") else None)
    x = inputs
    for layer in model.layers[1:]:
        if isinstance(layer, keras.layers.Lambda):
            channels = layer.input.shape[-1] // (scale * scale)
            shuffle = keras.layers.Conv2DTranspose(channels, scale, strides=scale, padding="valid",
                                                   use_bias=False, trainable=False, name=layer.name)
            x = shuffle(x)
            shuffle.set_weights([shuffle_kernel(scale, channels)])
        else:
            x = layer(x)
    return keras.Model(inputs, x, name=model.name)


def model_from_weights(config: ModelConfig, weights: Sequence[np.ndarray]):
    """Returns the trainer's model for `config` with `weights` assigned (the checkpoint's model)."""
    model = build_model(config, seed=0)
    if [tuple(w.shape) for w in model.weights] != [tuple(np.shape(w)) for w in weights]:
        raise ValueError(f"the weights do not fit {config.describe()}")
    for variable, value in zip(model.weights, weights):
        variable.assign(value)
    return model


def portable_model(config: ModelConfig, weights: Sequence[np.ndarray]):
    """Returns the checkpoint's network made of built-in Keras layers only (same outputs)."""
    import keras

    model = model_from_weights(config, weights)
    if any(isinstance(layer, keras.layers.Lambda) for layer in model.layers):
        model = _replace_lambdas(model, config.scale)
    return model


def receptive_radius(model) -> int:
    """Returns a bound, in input pixels, on how far an output pixel sees: the sum over the
    convolutions of their kernel radius, counted at the resolution each one runs at."""
    import keras

    radius, resolution = 0.0, 1
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            radius += (max(layer.kernel_size) // 2 + 1) / resolution
            resolution *= max(layer.strides)
        elif isinstance(layer, keras.layers.Conv2D):
            size = max(k + (k - 1) * (d - 1) for k, d in zip(layer.kernel_size, layer.dilation_rate))
            radius += (size // 2) / resolution
        elif isinstance(layer, keras.layers.UpSampling2D):
            resolution = max(resolution, max(layer.size))
        elif isinstance(layer, keras.layers.Lambda):
            resolution = max(resolution, 2)
    return int(np.ceil(radius))


def describe_input(model) -> dict[str, Any]:
    """Returns what the model's input layer says: its name ("low" or "upsampled") and channels."""
    name = model.inputs[0].name.split(":")[0] if model.inputs else "low"
    return {"input_kind": "upsampled" if "upsampled" in name else "low", "channels": int(model.inputs[0].shape[-1])}

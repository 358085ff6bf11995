"""Starting a run from published weights: a `.keras` model, or a Keras 2 HDF5 weights or model
file (as `save_weights`/`save` wrote them: the root's — or `model_weights`' — `layer_names`
attribute in model order, one group per layer with a `weight_names` attribute and its arrays);
or from another run's network, a shardrun checkpoint (`.ckpt.npz`, its weights in model order).

Weights are matched layer by layer, in order, among the layers that have weights (names differ
between Keras versions and authors), with every array's shape checked; the first layer that
differs is named in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shardrun.train.checkpoint import CHECKPOINT_SUFFIX
from shardrun.train.models import ModelError


class InitError(ModelError):
    """An init file that cannot be read, or whose weights do not fit the run's network."""


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _fixed_shuffle(layer) -> bool:
    """True for the fixed sub-pixel shuffle that `export` writes in place of ESPCN's Lambda
    (train/portable.py): its weights are a permutation, not the network's, so an ESPCN export
    initialises an ESPCN run like any other network's export."""
    import keras

    from shardrun.train.portable import shuffle_kernel

    if not isinstance(layer, keras.layers.Conv2DTranspose) or layer.trainable_weights or len(layer.weights) != 1:
        return False
    kernel = np.asarray(layer.weights[0])
    scale, _, channels, _ = kernel.shape
    return kernel.shape == (scale, scale, channels, scale * scale * channels) and np.array_equal(
        kernel, shuffle_kernel(scale, channels))


def _checkpoint_layers(path: Path, model) -> list[tuple[str, list[np.ndarray]]]:
    """Returns a shardrun checkpoint's weights (another run's network: init = "run:NAME") cut into
    `model`'s layers: the file keeps the weights in model order, not by layer."""
    from shardrun.train.checkpoint import CheckpointError, read_checkpoint

    try:
        _, weights, _ = read_checkpoint(path)
    except CheckpointError as error:
        raise InitError(f"init checkpoint {path.name} cannot be read: {error}") from error
    layers, at = [], 0
    for layer in model.layers:
        if layer.weights:
            count = len(layer.weights)
            layers.append((f"weights {at + 1}-{at + count}", weights[at:at + count]))
            at += count
    if at < len(weights):
        layers.append((f"weights {at + 1}-{len(weights)}", weights[at:]))
    return layers


def read_layers(path: Path | str, model=None) -> list[tuple[str, list[np.ndarray]]]:
    """Returns (layer name, arrays) of each layer with weights in the file, in model order (a
    shardrun checkpoint's cut into `model`'s layers)."""
    path = Path(path)
    if path.suffix == Path(CHECKPOINT_SUFFIX).suffix and model is not None:
        return _checkpoint_layers(path, model)
    if path.suffix == ".keras":
        import keras

        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - any failure to read it is one line about the file
            raise InitError(f"init file {path.name} cannot be loaded as a Keras model: "
                            f"{type(error).__name__}: {error}") from error
        return [(layer.name, [np.asarray(w) for w in layer.get_weights()])
                for layer in model.layers if layer.weights and not _fixed_shuffle(layer)]
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise InitError(f"init file {path.name} is neither a .keras file nor a Keras 2 HDF5 "
                                "weights or model file (no layer_names)")
            layers = []
            for name in map(_text, group.attrs["layer_names"]):
                names = [_text(w) for w in group[name].attrs.get("weight_names", [])]
                if names:
                    layers.append((name, [np.asarray(group[name][w]) for w in names]))
            return layers
    except InitError:
        raise
    except (OSError, KeyError) as error:
        raise InitError(f"init file {path.name} cannot be read: {error}") from error


def load_init(model, path: Path | str, output_scale: float | None = None) -> int:
    """Returns the number of layers loaded: the file's weights assigned to `model` layer by
    layer; `output_scale` (e.g. 255 for a network that outputs 0–255 from 0–1 inputs) divides
    the last layer's weights and bias, so the network outputs 0–1.

    Raises InitError naming the first layer that differs.
    """
    path = Path(path)
    theirs = read_layers(path, model)
    ours = [layer for layer in model.layers if layer.weights]
    for i, layer in enumerate(ours):
        shapes = [tuple(w.shape) for w in layer.weights]
        if i >= len(theirs):
            raise InitError(f"init file {path.name} has {len(theirs)} layers with weights, this network "
                            f"{len(ours)}: its layer {i + 1} ({layer.name}, {shapes}) has no counterpart")
        name, arrays = theirs[i]
        if [a.shape for a in arrays] != shapes:
            raise InitError(f"init file {path.name} does not fit this network: layer {i + 1} is "
                            f"{layer.name} with weights {shapes} here, {name} with "
                            f"{[a.shape for a in arrays]} in the file")
    if len(theirs) > len(ours):
        raise InitError(f"init file {path.name} has {len(theirs)} layers with weights, this network "
                        f"{len(ours)}: the file's layer {len(ours) + 1} ({theirs[len(ours)][0]}) has no "
                        "counterpart")
    for i, (layer, (_, arrays)) in enumerate(zip(ours, theirs)):
        if output_scale is not None and i == len(ours) - 1:
            arrays = [a / output_scale for a in arrays]
        for variable, value in zip(layer.weights, arrays):
            variable.assign(value.astype(np.float32))
    return len(ours)


def load_init_file(model, path: Path | str, sha256: str | None, output_scale: float | None) -> int:
    """Returns the layers loaded (see `load_init`), once the file's bytes are checked against
    `sha256` (the plan's record; None: not checked)."""
    import hashlib

    path = Path(path)
    if sha256 is not None:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as error:
            raise InitError(f"init file {path.name} cannot be read: {error.strerror or error}") from error
        if digest != sha256:
            raise InitError(f"init file {path.name}: its sha256 is {digest}, but the plan recorded {sha256}")
    return load_init(model, path, output_scale)

"""A run's own network (`file:PATH:FUNC`) and init weights (Keras 2 HDF5 or .keras), matched
layer by layer."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest

from shardrun.train.init import InitError, load_init, load_init_file, read_layers
from shardrun.train.models import ModelError, build_model, check_network, resolve_model

NET = '''
import keras
import tensorflow as tf


def build(scale, channels, filters=4):
    inputs = keras.Input((None, None, channels))
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(channels * scale * scale, 3, padding="same")(x)
    outputs = keras.layers.Lambda(lambda t: tf.nn.depth_to_space(t, scale))(x)
    return keras.Model(inputs, outputs)


def wrong_scale(scale, channels):
    inputs = keras.Input((None, None, channels))
    return keras.Model(inputs, keras.layers.Conv2D(channels, 3, padding="same")(inputs))
'''


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "mynet.py"
    path.write_text(NET)
    return path


def test_a_network_file_builds_and_its_options_reach_build(net_file):
    config = resolve_model(f"file:{net_file.name}:build", 2, 1, {"filters": 3}, str(net_file))
    assert config.input_kind == "low" and config.network.function == "build"
    assert config.identity()["sha256"] == hashlib.sha256(net_file.read_bytes()).hexdigest()
    model = build_model(config, seed=1)
    check_network(config, model)
    assert model.layers[1].filters == 3
    again = build_model(config, seed=1)  # a seed fixes the file's initial weights too
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.weights, again.weights))


def test_a_bad_network_file_is_one_line_naming_the_file(net_file, tmp_path):
    with pytest.raises(ModelError, match=r"network file mynet.py has no function nothere\(scale, channels"):
        resolve_model("file:mynet.py:nothere", 2, 1, None, str(net_file))
    broken = tmp_path / "broken.py"
    broken.write_text("import keras\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(ModelError, match=r"^network file broken.py does not import: RuntimeError: no GPU here$"):
        resolve_model("file:broken.py:build", 2, 1, None, str(broken))
    with pytest.raises(ModelError, match=r"option 'depth' is not taken by build of mynet.py; it takes: filters"):
        resolve_model("file:mynet.py:build", 2, 1, {"depth": 3}, str(net_file))
    with pytest.raises(ModelError, match=r"its sha256 is [0-9a-f]{64}, but the plan recorded 00"):
        resolve_model("file:mynet.py:build", 2, 1, None, str(net_file), "00")
    config = resolve_model("file:mynet.py:wrong_scale", 3, 1, None, str(net_file))
    with pytest.raises(ModelError) as caught:
        check_network(config, build_model(config))
    assert str(caught.value) == ("wrong_scale(3, 1) of mynet.py turns a 6x5 input into 6x5 with 1 channel(s); "
                                 "scale 3 needs 18x15 with 1")


def keras2_h5(path, layers, model_file=False):
    """Writes `layers` [(name, [arrays])] as Keras 2's save_weights (or save: model_weights) did."""
    with h5py.File(path, "w") as f:
        group = f.create_group("model_weights") if model_file else f
        if model_file:
            f.attrs["model_config"] = b"{}"
        group.attrs["layer_names"] = [name.encode() for name, _ in layers]
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = b"2.2.4"
        for name, arrays in layers:
            g = group.create_group(name)
            names = [f"{name}/{'kernel' if a.ndim > 1 else 'bias'}:0".encode() for a in arrays]
            g.attrs["weight_names"] = names
            for n, a in zip(names, arrays):
                g.create_dataset(n.decode(), data=a)


def tiny_decusr():
    return build_model(resolve_model("decusr", 2, 1, {"blocks": 1, "filters": 2}), seed=0)


def published_layers(model, rng):
    # As the authors' Keras 2 code names them, with input and upsampling layers holding no weights.
    layers = [("input_1", []), ("up_sampling2d_1", [])]
    for i, layer in enumerate(l for l in model.layers if l.weights):
        layers.append((f"conv2d_{i + 1}", [rng.standard_normal(w.shape).astype(np.float32) for w in layer.weights]))
    return layers


@pytest.mark.parametrize("model_file", [False, True])
def test_keras2_hdf5_weights_load_layer_by_layer(tmp_path, model_file):
    model = tiny_decusr()
    layers = published_layers(model, np.random.default_rng(0))
    keras2_h5(tmp_path / "x2.h5", layers, model_file)
    assert [name for name, _ in read_layers(tmp_path / "x2.h5")] == [n for n, a in layers if a]
    assert load_init(model, tmp_path / "x2.h5") == 8
    loaded = [w.numpy() for l in model.layers if l.weights for w in l.weights]
    expected = [a for _, arrays in layers for a in arrays]
    assert all(np.array_equal(a, b) for a, b in zip(loaded, expected))


def test_an_output_scale_of_255_is_folded_into_the_last_layer(tmp_path):
    layers = published_layers(tiny_decusr(), np.random.default_rng(1))
    keras2_h5(tmp_path / "x2.h5", layers)
    plain, scaled = tiny_decusr(), tiny_decusr()
    load_init(plain, tmp_path / "x2.h5")
    load_init_file(scaled, tmp_path / "x2.h5", hashlib.sha256((tmp_path / "x2.h5").read_bytes()).hexdigest(), 255)
    x = np.random.default_rng(2).random((1, 6, 6, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(scaled(x)) * 255, np.asarray(plain(x)), rtol=1e-5, atol=1e-6)
    last = [l for l in scaled.layers if l.weights][-1]
    np.testing.assert_allclose(last.weights[1].numpy(), layers[-1][1][1] / 255, rtol=1e-6)


def test_a_file_of_another_network_names_the_first_layer_that_differs(tmp_path):
    other = build_model(resolve_model("decusr", 2, 1, {"blocks": 1, "filters": 3}), seed=0)
    keras2_h5(tmp_path / "f3.h5", published_layers(other, np.random.default_rng(0)))
    with pytest.raises(InitError, match=r"^init file f3.h5 does not fit this network: layer 1 is \S+ with weights "
                                        r"\[\(3, 3, 1, 2\), \(2,\)\] here, conv2d_1 with \[\(3, 3, 1, 3\), \(3,\)\] "
                                        r"in the file$"):
        load_init(tiny_decusr(), tmp_path / "f3.h5")
    short = published_layers(tiny_decusr(), np.random.default_rng(0))[:-1]
    keras2_h5(tmp_path / "short.h5", short)
    with pytest.raises(InitError, match=r"init file short.h5 has 7 layers with weights, this network 8: "
                                        r"its layer 8 \(.*\) has no counterpart"):
        load_init(tiny_decusr(), tmp_path / "short.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(InitError, match="init file junk.h5 cannot be read"):
        load_init(tiny_decusr(), tmp_path / "junk.h5")
    with pytest.raises(InitError, match="but the plan recorded"):
        load_init_file(tiny_decusr(), tmp_path / "short.h5", "0" * 64, None)


def test_a_keras_file_loads_too(tmp_path):
    source = tiny_decusr()
    for w in source.weights:
        w.assign(np.random.default_rng(3).standard_normal(w.shape).astype(np.float32))
    source.save(tmp_path / "exported.keras")
    target = tiny_decusr()
    load_init(target, tmp_path / "exported.keras")
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(source.weights, target.weights))


def test_an_espcn_export_initialises_an_espcn_network(tmp_path):
    # `export` writes ESPCN's shuffle as a fixed transposed convolution (train/portable.py); an
    # export is still a run's init (a collaborative run started from a plain run's network).
    from shardrun.train.portable import portable_model

    config = resolve_model("espcn", 2, 1, {})
    source = build_model(config, seed=1)
    for w in source.weights:
        w.assign(np.random.default_rng(4).standard_normal(w.shape).astype(np.float32))
    portable_model(config, [w.numpy() for w in source.weights]).save(tmp_path / "espcn.keras")
    target = build_model(config, seed=2)
    assert load_init(target, tmp_path / "espcn.keras") == len([layer for layer in target.layers if layer.weights])
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(source.weights, target.weights))

"""`shardrun export`: a run's accepted checkpoint as a network anyone can load without shardrun.

Formats (docs/models-out.md tells how to load each):
- keras: one `.keras` file of built-in layers only, for `keras.saving.load_model`;
- savedmodel: a TensorFlow SavedModel whose `serving_default` takes any height and width;
- tflite: a TensorFlow Lite flatbuffer (resize the input tensor to the image's size);
- onnx: through tf2onnx, opset 17 (the optional extra `shardrun[onnx]`).

Beside the output, `<name>.model.json` records the run, the model, its scale, channels and input
kind, the checkpoint's step and hashes, and its validation figures.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardrun.config.job import JobConfig
from shardrun.product.checkpoints import Fetched, ProductError, fetch_checkpoint

FORMATS = ("keras", "savedmodel", "tflite", "onnx")
SUFFIX = {"keras": ".keras", "savedmodel": "", "tflite": ".tflite", "onnx": ".onnx"}
MODEL_JSON_SCHEMA = "shardrun.model/1"
ONNX_OPSET = 17
ONNX_HINT = "the onnx format needs tf2onnx and onnxruntime: pip install 'shardrun[onnx]'"
# What the tests hold each format to, against the checkpoint's own model on the same input
# (float32 images in [0, 1]): keras and savedmodel run the same TensorFlow kernels, exactly.
TOLERANCE = {"keras": 0.0, "savedmodel": 0.0, "tflite": 1e-4, "onnx": 1e-4}


@dataclass(frozen=True)
class ExportResult:
    """What export wrote: the model, its description beside it, and any notices."""

    path: Path
    format: str
    description_path: Path
    description: dict[str, Any]
    notices: list[str] = field(default_factory=list)


def description_path(output: Path) -> Path:
    """Returns where the `model.json` of an exported model lies: `<name>.model.json` beside it."""
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(f"{stem}.model.json")


def default_output(run: str, step: int, fmt: str) -> Path:
    """Returns the default output path: `<run>-step<N>` with the format's suffix."""
    name = f"{run}-step{step}" + ("-savedmodel" if fmt == "savedmodel" else "")
    return Path(name + SUFFIX[fmt])


def model_config_of(meta: dict[str, Any]):
    """Returns the ModelConfig a checkpoint's meta describes."""
    from shardrun.train.models import resolve_model

    model = meta["model"]
    return resolve_model(model["name"], model["scale"], model["channels"], model.get("options"))


def describe(fetched: Fetched, job_name: str, fmt: str) -> dict[str, Any]:
    """Returns the model.json for an exported checkpoint."""
    config = model_config_of(fetched.meta)
    return {
        "schema": MODEL_JSON_SCHEMA,
        "job": job_name,
        "run": fetched.run,
        "format": fmt,
        "model": config.name,
        "options": dict(config.options),
        "scale": config.scale,
        "channels": config.channels,
        "input_kind": config.input_kind,
        "input": ("bicubic-enlarged image (MATLAB imresize), H×W×C" if config.input_kind == "upsampled"
                  else "low-resolution image, H×W×C"),
        "color": "BT.601 Y in [16, 235]/255" if config.channels == 1 else "RGB in [0, 1]",
        "value_range": [0.0, 1.0],
        "checkpoint": {"step": fetched.step, "steps_total": fetched.steps_total, "key": fetched.key,
                       "md5": fetched.md5, "sha256": fetched.sha256},
        "validation": fetched.validation,
    }


def _write_keras(model, path: Path) -> None:
    model.save(path)


def _write_savedmodel(model, path: Path) -> None:
    import tensorflow as tf

    channels = int(model.inputs[0].shape[-1])
    spec = tf.TensorSpec((None, None, None, channels), tf.float32, name="image")
    model.export(str(path), format="tf_saved_model", input_signature=[spec], verbose=False)


def _with_resize_upsampling(model):
    """Returns `model` with each nearest-neighbour UpSampling2D replaced by the same enlargement
    through `tf.image.resize` (TFLite's builtin RESIZE_NEAREST_NEIGHBOR), weights shared.

    Keras's UpSampling2D repeats rows and columns with `tf.repeat`, whose reshape loses the
    static channel count; the Conv2D after DECUSR's concatenation then needs TensorFlow Select
    ops, which the interpreter of the `tensorflow` pip package (2.21) cannot run (no Flex
    delegate). Nearest resize by an integer factor picks the same source pixel as the repeat
    (floor((y + 0.5) / s) = floor(y / s)), so the result is unchanged.
    """
    import keras
    import tensorflow as tf

    if not any(isinstance(layer, keras.layers.UpSampling2D) for layer in model.layers):
        return model

    class ResizeUpsampling(keras.layers.Layer):
        def __init__(self, size, **kwargs):
            super().__init__(**kwargs)
            self.size = tuple(size)

        def call(self, x):
            shape = tf.shape(x)
            return tf.image.resize(x, [shape[1] * self.size[0], shape[2] * self.size[1]], method="nearest")

        def compute_output_shape(self, shape):
            grow = lambda n, f: None if n is None else n * f  # noqa: E731
            return (shape[0], grow(shape[1], self.size[0]), grow(shape[2], self.size[1]), shape[3])

    def clone(layer):
        if isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "nearest":
            return ResizeUpsampling(layer.size, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
        copy.set_weights(model.get_weights())
    except Exception:  # noqa: BLE001 - a network of the user's own that does not clone: convert it as is
        return model
    return copy


def _write_tflite(model, path: Path) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as scratch:
        _write_savedmodel(_with_resize_upsampling(model), Path(scratch) / "saved")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(scratch) / "saved"))
        try:
            path.write_bytes(converter.convert())
        except Exception:  # noqa: BLE001 - ConverterError: some op needs TensorFlow's own kernels
            # A network of the user's own with an op TFLite has no builtin for: fall back to TF
            # Select ops. Such a file needs an interpreter with the Flex delegate linked (LiteRT's
            # select-ops build; the `tensorflow` 2.21 pip interpreter has none): docs/models-out.md.
            converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(scratch) / "saved"))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
            path.write_bytes(converter.convert())


def _write_onnx(model, path: Path) -> None:
    try:
        import tf2onnx
    except ImportError as e:
        raise ProductError(ONNX_HINT) from e
    import tensorflow as tf

    channels = int(model.inputs[0].shape[-1])
    spec = (tf.TensorSpec((None, None, None, channels), tf.float32, name="image"),)
    function = tf.function(lambda image: model(image, training=False))
    tf2onnx.convert.from_function(function, input_signature=spec, opset=ONNX_OPSET, output_path=str(path))


WRITERS = {"keras": _write_keras, "savedmodel": _write_savedmodel, "tflite": _write_tflite, "onnx": _write_onnx}


def check_output(path: Path, force: bool) -> None:
    """Returns nothing; raises ProductError when `path` exists and `force` is not given."""
    if path.exists() and not force:
        raise ProductError(f"{path} already exists; pass --force to replace it")


def write_model(model, fmt: str, output: Path, force: bool = False) -> Path:
    """Returns `output` after writing the Keras `model` there in format `fmt` (atomically: a
    temporary name in the same folder, then a rename)."""
    if fmt not in FORMATS:
        raise ProductError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
    if fmt == "keras" and output.suffix != ".keras":
        raise ProductError(f"a keras export must end in .keras (Keras requires it), got {output}")
    check_output(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(f".{output.name}.tmp{SUFFIX[fmt]}")
    _remove(temp)
    try:
        WRITERS[fmt](model, temp)
        _remove(output)
        temp.rename(output)
    finally:
        _remove(temp)
    return output


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def export_run(job: JobConfig, run: str, choice: str | int = "final", fmt: str = "keras",
               output: Path | None = None, force: bool = False, clock=None) -> ExportResult:
    """Returns what was written after exporting `run`'s chosen accepted checkpoint as `fmt`."""
    from shardrun.plan.job import load_job_ledger
    from shardrun.train.portable import portable_model

    if fmt not in FORMATS:
        raise ProductError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import tf2onnx  # noqa: F401
        except ImportError as e:
            raise ProductError(ONNX_HINT) from e
    if output is not None:
        check_output(Path(output), force)
    ledger, _ = load_job_ledger(job, job.open_store(job.home), clock)
    try:
        fetched = fetch_checkpoint(job, ledger, run, choice)
    finally:
        ledger.close()
    output = Path(output) if output is not None else default_output(run, fetched.step, fmt)
    check_output(output, force)
    model = portable_model(model_config_of(fetched.meta), fetched.weights)
    write_model(model, fmt, output, force)
    description = describe(fetched, job.name, fmt)
    info = description_path(output)
    info.write_text(json.dumps(description, indent=2) + "\n", "utf-8")
    return ExportResult(output, fmt, info, description, list(fetched.notices))

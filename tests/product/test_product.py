"""export, upscale and evaluate on a tiny job trained for real (decusr on Y, espcn on RGB)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.product.trained_job import train_job
from shardrun.cli.main import main

_TRAINED: dict[str, Path] = {}


@pytest.fixture
def job(tmp_path_factory, tmp_path):
    """A copy of a job trained once per process (each test may damage its copy)."""
    from shardrun.config.job import load_job

    if "job" not in _TRAINED:
        _TRAINED["job"] = train_job(tmp_path_factory.mktemp("trained")).base_dir
    shutil.copytree(_TRAINED["job"], tmp_path / "job")
    return load_job(tmp_path / "job" / "job.toml")


def reference(job, run, x):
    from shardrun.ledger.db import Ledger
    from shardrun.product.checkpoints import fetch_checkpoint
    from shardrun.product.export import model_config_of
    from shardrun.train.portable import model_from_weights

    ledger = Ledger.open(job.ledger_path)
    fetched = fetch_checkpoint(job, ledger, run, "final")
    return model_from_weights(model_config_of(fetched.meta), fetched.weights)(x).numpy()


def test_keras_export_loads_in_plain_keras_without_shardrun(job, tmp_path):
    out = tmp_path / "rgb.keras"
    result = CliRunner().invoke(main, ["export", str(job.base_dir / "job.toml"), "--run", "rgb", "-o", str(out)])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(0).random((1, 13, 11, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys, importlib.util
        sys.meta_path = [f for f in sys.meta_path
                         if "editable" not in (getattr(f, "__module__", "") + type(f).__module__).lower()]
        sys.path = [p for p in sys.path if "wt" not in p and "main" not in p.split("/")[-1:]]
        assert importlib.util.find_spec("shardrun") is None, "shardrun must not be importable"
        import keras, numpy as np
        y = keras.saving.load_model({str(out)!r})(np.load({str(tmp_path / 'x.npy')!r})).numpy()
        np.save({str(tmp_path / 'y.npy')!r}, y)
    """)
    subprocess.run([sys.executable, "-I", "-c", script], check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert np.array_equal(np.load(tmp_path / "y.npy"), reference(job, "rgb", x))
    described = json.loads((tmp_path / "rgb.model.json").read_text())
    assert described["model"] == "espcn" and described["checkpoint"]["step"] == 6
    assert len(described["checkpoint"]["sha256"]) == 64 and described["validation"]["psnr"] > 0


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite", "onnx"])
def test_every_format_matches_the_checkpoint(job, tmp_path, fmt):
    import tensorflow as tf

    from shardrun.product.export import TOLERANCE, export_run

    if fmt == "onnx":
        import onnxruntime as ort  # in the test extra: the ONNX export is checked, never skipped
    out = tmp_path / {"savedmodel": "m", "tflite": "m.tflite", "onnx": "m.onnx"}[fmt]
    # ESPCN (RGB): DECUSR's TFLite export needs TF Select ops (see docs/models-out.md).
    export_run(job, "rgb", "final", fmt, out)
    x = np.random.default_rng(1).random((1, 19, 23, 3)).astype(np.float32)
    if fmt == "savedmodel":
        y = list(tf.saved_model.load(str(out)).signatures["serving_default"](image=tf.constant(x)).values())[0].numpy()
    elif fmt == "tflite":
        interpreter = tf.lite.Interpreter(model_path=str(out))
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    else:
        session = ort.InferenceSession(str(out))
        y = session.run(None, {session.get_inputs()[0].name: x})[0]
    ref = reference(job, "rgb", x)
    assert y.shape == ref.shape and np.abs(y - ref).max() <= TOLERANCE[fmt]


def test_bad_input_is_one_line_each(job, tmp_path):
    from shardrun.ledger.db import Ledger

    jobfile = str(job.base_dir / "job.toml")
    run = CliRunner().invoke
    out = tmp_path / "a.keras"
    assert "no run named 'nope'" in run(main, ["export", jobfile, "--run", "nope", "-o", str(out)]).output
    assert "no accepted checkpoint at step 99" in run(main, ["export", jobfile, "--run", "y", "--checkpoint", "99",
                                                             "-o", str(out)]).output
    out.write_text("x")
    result = run(main, ["export", jobfile, "--run", "y", "-o", str(out)])
    assert result.exit_code == 1 and "already exists; pass --force" in result.output
    # The final checkpoint damaged on the store: export falls back to step 5 and says so.
    ledger = Ledger.open(job.ledger_path)
    final = ledger.checkpoints("y")[0]
    (job.base_dir / "stores" / "alice" / final["key"]).write_bytes(b"damaged")
    result = run(main, ["export", jobfile, "--run", "y", "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert "falling back" in result.output and "step 5" in result.output
    assert json.loads((tmp_path / "a.model.json").read_text())["checkpoint"]["step"] == 5


def test_a_run_without_checkpoints_says_which_step_comes_first(tmp_path):
    from tests.product.trained_job import RUNS

    fresh = train_job(tmp_path, runs=RUNS[:1], finish=False)
    result = CliRunner().invoke(main, ["export", str(fresh.base_dir / "job.toml"), "--run", "y"])
    assert result.exit_code == 1 and "no accepted checkpoint yet; the first is due by step 2" in result.output


def test_tiled_upscaling_is_bit_identical_to_whole_image(job):
    from shardrun.product.upscale import enlarge_pixels, load_model_source

    model = load_model_source(f"{job.base_dir / 'job.toml'}:y")
    image = np.random.default_rng(2).random((45, 61, 3)).astype(np.float32)
    whole = enlarge_pixels(model, image, tile=1000)
    assert whole.shape == (90, 122, 3)
    assert np.array_equal(enlarge_pixels(model, image, tile=16), whole)


def test_upscale_keeps_format_depth_and_orientation_and_reports_bad_files(job, tmp_path):
    jobfile = str(job.base_dir / "job.toml")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: width and height swap once applied
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "turned.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 65536, (16, 18), dtype=np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "notes.png").write_text("not an image")
    good = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 3])
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "tiny.png")
    names = ["photo.jpg", "turned.jpg", "deep.png", "notes.png", "cut.jpg", "tiny.png"]
    result = CliRunner().invoke(main, ["upscale", f"{jobfile}:y", *[str(tmp_path / n) for n in names],
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 3 and any("notes.png" in e for e in errors) and any("tiny.png" in e for e in errors)
    with Image.open(tmp_path / "out" / "photo_x2.jpg") as im:
        assert im.format == "JPEG" and im.size == (60, 40)
    with Image.open(tmp_path / "out" / "turned_x2.jpg") as im:
        assert im.size == (40, 60)
    with Image.open(tmp_path / "out" / "deep_x2.png") as im:
        assert im.mode.startswith("I") and im.size == (36, 32) and np.asarray(im).max() > 255


def test_metrics_match_scikit_image_on_its_photos():
    import skimage
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from shardrun.train.metrics import psnr, ssim

    for name in ("camera", "coffee"):
        hr = getattr(skimage.data, name)().astype(np.float64) / 255.0
        y = hr if hr.ndim == 2 else hr @ np.array([65.481, 128.553, 24.966]) / 255 + 16 / 255
        noisy = np.clip(y + np.random.default_rng(0).normal(0, 0.05, y.shape), 0, 1)
        ref, est = y[4:-4, 4:-4], noisy[4:-4, 4:-4]
        assert psnr(y, noisy, 4) == pytest.approx(peak_signal_noise_ratio(ref, est, data_range=1.0), abs=1e-9)
        expected = structural_similarity(ref, est, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=1.0)
        assert ssim(y, noisy, 4) == pytest.approx(expected, abs=2e-3)


def test_matlab_bicubic_known_values_and_properties():
    from shardrun.train.imresize import imresize

    # Octave/MATLAB: imresize(reshape(0:15, 4, 4)', 0.5, 'bicubic', 'AntiAliasing', false)
    assert np.allclose(imresize(np.arange(16.0).reshape(4, 4), 0.5, antialias=False),
                       [[2.1875, 4.3125], [10.6875, 12.8125]])
    assert np.allclose(imresize(np.full((12, 9), 0.3), 1 / 3), 0.3, atol=1e-15)
    board = np.indices((32, 32)).sum(axis=0) % 2.0
    assert np.abs(imresize(board, 0.5)[2:-2, 2:-2] - 0.5).max() < 0.1  # antialiased: no checkerboard left


def test_evaluate_scores_runs_and_bicubic_on_a_folder(job, tmp_path):
    import skimage

    data = tmp_path / "Set5"
    data.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()[:64, :80]).save(data / f"{name}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "small.png")
    result = CliRunner().invoke(main, ["evaluate", str(job.base_dir / "job.toml"), "--data", str(data), "--json"])
    import traceback
    assert result.exit_code == 0, "".join(traceback.format_exception(*result.exc_info))
    report = json.loads(result.output)
    assert [r["run"] for r in report["results"]] == ["y", "rgb"]
    y = report["results"][0]
    assert len(y["images"]) == 2 and "small.png" in y["skipped"][0]
    assert y["bicubic_psnr"] > 20 and {f["model"] for f in y["published"]} == {"bicubic"}
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures")
    result = CliRunner().invoke(main, ["evaluate", str(job.base_dir / "job.toml"), "--data", str(empty)])
    assert result.exit_code == 1 and "holds no usable image" in result.output


def test_evaluate_html_shows_each_runs_scores_and_crops_in_chromium(job, tmp_path):
    import re

    import skimage

    from tests.status.test_report import chromium

    data = tmp_path / "Set5"
    data.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()[:64, :80]).save(data / f"{name}.png")
    page = tmp_path / "eval.html"
    result = CliRunner().invoke(main, ["evaluate", str(job.base_dir / "job.toml"), "--data", str(data),
                                       "--json", "--html", str(page)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)  # the pictures' bytes stay out of the JSON
    assert all("pictures" not in r for r in report["results"])
    html_text = page.read_text("utf-8")
    # two runs, two images each: every crop is an inline PNG, nothing is fetched
    assert html_text.count('src="data:image/png;base64,') == 4 and "http" not in html_text.split("<body>")[1]
    dom = chromium("--dump-dom", page.as_uri(), tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))
    y = report["results"][0]
    assert f"{y['psnr']:.2f}" in text and f"{y['images'][0]['bicubic_psnr']:.2f} dB" in text
    assert "astronaut.png: bicubic" in text and "published bicubic" in text
    refused = CliRunner().invoke(main, ["evaluate", str(job.base_dir / "job.toml"), "--data", str(data),
                                        "--html", str(page)])
    assert refused.exit_code == 1 and "already exists" in refused.output

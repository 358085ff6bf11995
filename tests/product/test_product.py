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


@pytest.mark.parametrize("run, fmt", [("rgb", "savedmodel"), ("rgb", "tflite"), ("rgb", "onnx"), ("y", "tflite")])
def test_every_format_matches_the_checkpoint(job, tmp_path, run, fmt):
    import tensorflow as tf

    from shardrun.product.export import TOLERANCE, export_run

    if fmt == "onnx":
        import onnxruntime as ort  # in the test extra: the ONNX export is checked, never skipped
    out = tmp_path / {"savedmodel": "m", "tflite": "m.tflite", "onnx": "m.onnx"}[fmt]
    # ESPCN (RGB) in every format, and DECUSR (Y) in TFLite: its UpSampling2D is exported as a
    # builtin nearest resize, so the file needs no TF Select ops, which the `tensorflow` pip
    # interpreter could not run (no Flex delegate; docs/models-out.md).
    export_run(job, run, "final", fmt, out)
    if fmt == "tflite":
        assert b"Flex" not in out.read_bytes()
    channels = 3 if run == "rgb" else 1
    x = np.random.default_rng(1).random((1, 19, 23, channels)).astype(np.float32)
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
    ref = reference(job, run, x)
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


def test_a_4000x3000_photo_reaches_the_network_only_in_tiles():
    """The network never sees more than a tile and its margins of a 4000×3000 photo (fails if
    tiling is removed: the whole image would be one 3000×4000 call)."""
    from shardrun.product.upscale import DEFAULT_TILE, LoadedModel, enlarge_quantized
    from shardrun.train.tiles import margin_for

    seen = []

    def nearest(x):  # stands in for a ×2 network: records what it is fed
        seen.append(x.shape[1:3])
        return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)

    model = LoadedModel("nearest", nearest, 2, 3, "low", radius=5, notices=[])
    values = np.random.default_rng(4).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    out = enlarge_quantized(model, values.astype(np.float32) / 255, bits=8)
    assert out.shape == (6000, 8000, 3) and out.dtype == np.uint8
    assert np.array_equal(out[::2, ::2], values) and np.array_equal(out[1::2, 1::2], values)
    side = DEFAULT_TILE + 2 * margin_for(model.radius, 2, "low")
    assert len(seen) == -(-3000 // DEFAULT_TILE) * -(-4000 // DEFAULT_TILE)
    assert max(h for h, _ in seen) <= side and max(w for _, w in seen) <= side


_PEAK_RSS = """
import json, resource, sys, time
import numpy as np
from shardrun.product.upscale import load_model_source, upscale_images
model = load_model_source(sys.argv[1])
model.predict(np.zeros((1, 16, 16, model.channels), np.float32))  # TensorFlow warmed up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.monotonic()
[result] = upscale_images(model, [sys.argv[2]], __import__("pathlib").Path(sys.argv[3]), tile=int(sys.argv[4]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"error": result.error, "size": result.size, "before_kib": before, "after_kib": after,
                  "seconds": time.monotonic() - start}))
"""


@pytest.mark.slow  # about a minute on two cores: ESPCN (64, 32) over 12 million input pixels
def test_upscaling_a_4000x3000_photo_keeps_peak_memory_bounded(job, tmp_path):
    """Peak RSS (the process's, TensorFlow's allocations included) grows by what the images
    themselves need plus a bounded allowance for the tiles, not by the network's activations
    over the whole photo. Measured on 2 cores: about 0.55 GB with 256-pixel tiles; the same
    photo in one tile (the whole image at once) took 10.8 GB."""
    from shardrun.product.upscale import DEFAULT_TILE

    height, width, scale = 3000, 4000, 2
    small = np.random.default_rng(5).integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.BICUBIC).save(tmp_path / "photo.png")
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, f"{job.base_dir / 'job.toml'}:rgb", str(tmp_path / "photo.png"),
         str(tmp_path / "out"), str(DEFAULT_TILE)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["error"] is None and report["size"] == [width * scale, height * scale]
    with Image.open(tmp_path / "out" / "photo_x2.png") as im:
        assert im.size == (width * scale, height * scale)
    grown = (report["after_kib"] - report["before_kib"]) * 1024
    pixels = height * width * 3
    # What the photo itself costs: decoded (uint8), as float32, and the 8-bit ×2 output, twice
    # (the array and the image written from it); then an allowance for the tiles in flight.
    images = pixels * (1 + 4 + 2 * scale * scale)
    tiles = 400 * 2**20
    # Whole-image inference would hold ESPCN's 64 + 32 + 3·scale² float32 maps over every input
    # pixel (5.2 GB, before TensorFlow's working copies): far above the bound.
    whole = height * width * (64 + 32 + 3 * scale * scale) * 4
    assert images + tiles < whole / 4
    assert grown < images + tiles, f"peak RSS grew by {grown / 2**20:.0f} MiB ({report})"


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


def benchmark_folder(folder: Path) -> Path:
    import skimage

    folder.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()[:64, :80]).save(folder / f"{name}.png")
    return folder


def test_evaluate_prints_the_published_figures_beside_the_measured_ones(job, tmp_path):
    jobfile = str(job.base_dir / "job.toml")
    result = CliRunner().invoke(main, ["evaluate", jobfile, "--data", str(benchmark_folder(tmp_path / "Set5"))])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    report = json.loads(CliRunner().invoke(main, ["evaluate", jobfile, "--data", str(tmp_path / "Set5"),
                                                   "--json"]).output)
    for r in report["results"]:  # y (DECUSR) and rgb (ESPCN), both ×2: Set5 ×2 has bicubic only for them
        title = next(i for i, line in enumerate(lines) if f"{r['label']} on Set5 ×2" in line)
        table = lines[title:next((i for i, line in enumerate(lines) if i > title and " on Set5 " in line), None)]
        mean = next(line for line in table if "mean" in line)
        assert f"{r['psnr']:.2f}" in mean and f"{r['bicubic_psnr']:.2f}" in mean
        published = next(line for line in table if "published bicubic" in line)
        assert "33.66" in published and "0.9299" in published  # configs/published.toml, Set5 ×2
        assert any("VDSR paper" in line for line in table)  # its source, under the table
    # the folder's name is matched without case: set14 is Set14
    result = CliRunner().invoke(main, ["evaluate", jobfile, "--data", str(benchmark_folder(tmp_path / "set14")),
                                       "--json"])
    assert [f["psnr"] for f in json.loads(result.output)["results"][0]["published"]] == [30.24]


def test_a_run_is_shown_its_own_familys_published_figures(job, tmp_path, monkeypatch):
    from shardrun.config import published

    shipped = published.load_published()
    espcn_x2 = published.PublishedFigure("espcn", "Set5", 2, 36.0, None, "a paper, for this test")
    monkeypatch.setattr(published, "load_published", lambda text=None: [*shipped, espcn_x2])
    result = CliRunner().invoke(main, ["evaluate", str(job.base_dir / "job.toml"), "--data",
                                       str(benchmark_folder(tmp_path / "Set5")), "--json"])
    assert result.exit_code == 0, result.output
    shown = {r["run"]: {f["model"] for f in r["published"]} for r in json.loads(result.output)["results"]}
    assert shown == {"y": {"bicubic"}, "rgb": {"bicubic", "espcn"}}  # decusr has none; espcn its own


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

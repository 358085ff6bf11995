"""`shardrun demo`: a whole job on the embedded local store, offline, in a few minutes.

It writes a job with two accounts and two runs over real photographs that scikit-image ships,
plans it (shards spread over both accounts), runs two workers side by side until every chunk is
done — they coordinate only through the journal, exactly as notebooks would — and scores each
run's final checkpoint against bicubic on photographs held out of training (they are also the
job's `validation` folder). It ends with a result: the better run exported as a .keras file, one
held-out photograph enlarged with it, and a side-by-side comparison, all under `result/`.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shardrun.config.job import load_job
from shardrun.plan.job import plan_job
from shardrun.errors import ShardrunError
from shardrun.ledger.db import Ledger
from shardrun.status.report import job_status
from shardrun.session import Session
from shardrun.worker import Worker, WorkerJob, WorkerSettings

# Training photographs and held-out ones, from skimage/data (all ship with scikit-image).
TRAIN_PHOTOS = ("astronaut.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg",
                "brick.png", "grass.png", "coins.png", "page.png", "ihc.png", "text.png", "moon.png")
HELD_OUT = ("camera.png", "coffee.png", "chelsea.png")

JOB = """\
# Written by `shardrun demo`: two accounts pooling local storage, two runs compared.
[job]
name = "demo"
data = "photos/"
validation = "heldout/"    # scored at every checkpoint, never trained on
platform = "colab-free"
shard_size_mb = 1          # small shards, so the demo's data spreads over both accounts
reserve_mb = 1
lease_minutes = 1

[[accounts]]
name = "alice"
store = "local://stores/alice"
quota_gb = 0.1

[[accounts]]
name = "bob"
store = "local://stores/bob"
quota_gb = 0.1

[[runs]]
name = "decusr-1block"
model = "decusr"
scale = 2
channels = 1
epochs = {epochs}
batch_size = 16
patch_size = 32
patches_per_image = 16
learning_rate = 0.002
seed = 1
patches_per_second = {pps}   # chunks of about {chunk} steps, as if a session were that short
[runs.options]
blocks = 1
filters = 8

[[runs]]
name = "decusr-2blocks"
model = "decusr"
scale = 2
channels = 1
epochs = {epochs}
batch_size = 16
patch_size = 32
patches_per_image = 16
learning_rate = 0.002
seed = 1
patches_per_second = {pps}
[runs.options]
blocks = 2
filters = 8
"""


@dataclass(frozen=True)
class RunScore:
    run: str
    psnr: float
    bicubic_psnr: float
    ssim: float
    bicubic_ssim: float

    @property
    def gain_db(self) -> float:
        return self.psnr - self.bicubic_psnr


@dataclass
class DemoResult:
    folder: Path
    status: dict
    scores: list[RunScore]
    workers: list[str]
    result: "DemoProduct | None" = None


@dataclass(frozen=True)
class DemoProduct:
    """The demo's result: the better run's exported model, an enlarged photo and a comparison."""

    run: str
    model: Path
    enlarged: Path
    comparison: Path


def _sample_folder() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def write_demo_job(folder: Path, epochs: int = 30, chunk_steps: int = 100) -> Path:
    """Writes the demo's photos and job file into `folder`; returns the job file."""
    samples = _sample_folder()
    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_PHOTOS:
        if not (samples / name).exists():
            raise ShardrunError(f"sample photo {samples / name} is missing: reinstall scikit-image")
        shutil.copyfile(samples / name, photos / name)
    heldout = folder / "heldout"
    heldout.mkdir(parents=True, exist_ok=True)
    for name in HELD_OUT:
        shutil.copyfile(samples / name, heldout / name)
    # One platform session (colab-free) leaves 33,960 s of training: pick a throughput that makes a
    # chunk `chunk_steps` steps long, so the demo shows chunks handed from worker to worker.
    pps = 16 * chunk_steps / 33_960
    path = folder / "job.toml"
    path.write_text(JOB.format(epochs=epochs, pps=f"{pps:.6f}", chunk=chunk_steps))
    return path


def held_out_images() -> list:
    """Returns the held-out photographs as RGB float arrays in [0, 1]."""
    import numpy as np
    from PIL import Image

    images = []
    for name in HELD_OUT:
        with Image.open(_sample_folder() / name) as image:
            images.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    return images


def score_runs(job, ledger: Ledger) -> list[RunScore]:
    """Returns each run's PSNR/SSIM against bicubic, from its final checkpoint, on held-out photos."""
    from shardrun.train.metrics import evaluate
    from shardrun.train.models import build_model
    from shardrun.train.trainer import TrainConfig, read_checkpoint

    home = job.open_store(job.home)
    images = held_out_images()
    scores = []
    for run in job.runs:
        last = max(ledger.chunks(run.name), key=lambda c: c["idx"])
        path = job.base_dir / "final" / f"{run.name}.ckpt.npz"
        home.download(last["checkpoint_key"], path, expected_md5=last["checkpoint_md5"])
        config = TrainConfig.from_run(run.to_payload())
        model_config = config.resolve()
        model = build_model(model_config)
        for variable, value in zip(model.weights, read_checkpoint(path)[1]):
            variable.assign(value)
        result = evaluate(model, config.scale, config.channels, model_config.input_kind, images, list(HELD_OUT))
        scores.append(RunScore(run.name, result.psnr, result.bicubic_psnr, result.ssim, result.bicubic_ssim))
    return scores


def run_demo(folder: Path, workers: int = 2, epochs: int = 30, chunk_steps: int = 100,
             on_progress: Callable[[str, int, int], None] | None = None,
             on_plan: Callable[[object], None] | None = None) -> DemoResult:
    """Plans the demo job in `folder`, trains it with `workers` workers, and scores the runs."""
    job = load_job(write_demo_job(folder, epochs, chunk_steps))
    report = plan_job(job, scan_workers=1)
    if on_plan:
        on_plan(report)
    totals = {r.run.name: r.steps_total for r in report.runs}
    settings = WorkerSettings(settle_seconds=1.0, heartbeat_seconds=2.0, checkpoint_seconds=30.0, poll_seconds=1.0)
    session = Session("local", 0.0, None, "demo: no session limit")
    accounts = [a.name for a in job.accounts]
    team = [Worker(WorkerJob.from_config(job), accounts[i % len(accounts)], session, settings=settings)
            for i in range(workers)]
    progress = on_progress or (lambda run, step, total: None)
    for member in team:
        member.on_progress = lambda run, chunk, step, end, loss: progress(run, step, totals[run])
    errors: list[BaseException] = []

    def work(member: Worker) -> None:
        try:
            member.run()
        except BaseException as e:  # reported after the other worker finishes
            errors.append(e)

    threads = [threading.Thread(target=work, args=(m,), name=m.id) for m in team]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    status = job_status(job)
    ledger = Ledger.open(job.ledger_path)
    try:
        scores = score_runs(job, ledger)
    finally:
        ledger.close()
    return DemoResult(folder, status, scores, [m.id for m in team], demo_product(job, scores, folder / "result"))


ENLARGED_PHOTO = "chelsea.png"  # held out: the network never saw it


def demo_product(job, scores: list[RunScore], folder: Path) -> DemoProduct:
    """Exports the run with the larger gain over bicubic, enlarges a held-out photograph with the
    exported file (as a user would), and writes a comparison: the photo halved (MATLAB-style
    bicubic), enlarged back by bicubic and by the network, beside the original."""
    import numpy as np
    from PIL import Image

    from shardrun.product.export import export_run
    from shardrun.product.upscale import enlarge_pixels, load_model_source, upscale_images
    from shardrun.train.imresize import imresize

    best = max(scores, key=lambda s: s.gain_db)
    folder.mkdir(parents=True, exist_ok=True)
    exported = export_run(job, best.run, "final", "keras", folder / f"{best.run}.keras", force=True)
    model = load_model_source(str(exported.path))
    photo = job.base_dir / "heldout" / ENLARGED_PHOTO
    (enlarged,) = upscale_images(model, [photo], folder, force=True)
    if enlarged.error:
        raise ShardrunError(f"the demo could not enlarge {photo}: {enlarged.error}")
    with Image.open(photo) as image:
        original = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    s = model.scale
    h, w = original.shape[0] // s * s, original.shape[1] // s * s
    original = original[:h, :w]
    small = np.clip(imresize(original, 1 / s), 0, 1)
    bicubic = np.clip(imresize(small, float(s)), 0, 1)[:h, :w]
    network = enlarge_pixels(model, small)[:h, :w]
    gap = np.ones((h, 8, 3))
    side = np.concatenate([bicubic, gap, network, gap, original], axis=1)
    comparison = folder / f"{photo.stem}-bicubic-network-original.png"
    Image.fromarray(np.round(side * 255).astype(np.uint8)).save(comparison)
    return DemoProduct(best.run, exported.path, enlarged.output, comparison)

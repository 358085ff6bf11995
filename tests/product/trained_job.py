"""A tiny job trained to the end in a few seconds, for export, upscale and evaluate tests."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import job_text, write_images

# 12 images, 4 patches each, batches of 16: 3 steps per epoch, 6 steps per run, chunks of 2
# steps; a checkpoint (with validation) at every step.
RUN = dict(scale=2, epochs=2, batch_size=16, patch_size=16, patches_per_image=4,
           patches_per_second=0.000943, seed=3)
RUNS = [dict(name="y", model="decusr", channels=1, **RUN), dict(name="rgb", model="espcn", channels=3, **RUN)]


def train_job(folder: Path, runs=None, finish: bool = True):
    """Returns the job planned in `folder` and, with `finish`, trained to its end by one worker."""
    from shardrun.config.job import load_job
    from shardrun.plan.job import plan_job
    from shardrun.session import Session
    from shardrun.worker import Worker, WorkerJob, WorkerSettings

    write_images(folder / "images", 12, size=(48, 40))
    runs = runs or RUNS
    text = job_text(runs=runs, reserve_mb=0).replace("[[runs]]", "[[runs]]", 1)
    # DECUSR's options must follow its run's table.
    text = text.replace('model = "decusr"', 'model = "decusr"\noptions = { blocks = 1, filters = 8 }')
    (folder / "job.toml").write_text(text)
    job = load_job(folder / "job.toml")
    plan_job(job, scan_workers=1)
    if finish:
        settings = WorkerSettings(settle_seconds=0.01, heartbeat_seconds=0.0, checkpoint_seconds=3600,
                                  checkpoint_steps=1, poll_seconds=0.01)
        worker = Worker(WorkerJob.from_config(job), "alice", Session("local", 0.0, None, "test"), settings=settings)
        assert worker.run() == "finished"
    return job

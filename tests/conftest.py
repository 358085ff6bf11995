"""Shared fixtures: real images written with Pillow, and job folders with local-store accounts."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest_plugins = ["tests.drive_fixtures", "tests.drive_accounts"]


def write_images(folder: Path, count: int, size: tuple[int, int] = (48, 40), seed: int = 0,
                 mode: str = "RGB", prefix: str = "img") -> list[Path]:
    """Writes `count` distinct random PNG images; returns their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    channels = 3 if mode == "RGB" else 1
    for i in range(count):
        pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
        image = Image.fromarray(pixels.squeeze() if channels == 1 else pixels, mode)
        path = folder / f"{prefix}{i:05d}.png"
        image.save(path)
        paths.append(path)
    return paths


def job_text(name: str = "test-job", data: str = "images/", accounts=None, runs=None, **job_keys) -> str:
    """Returns a job file: `accounts` is a list of (name, quota_gb), `runs` a list of dicts."""
    accounts = accounts if accounts is not None else [("alice", 15), ("bob", 15)]
    runs = runs if runs is not None else [dict(name="decusr-x2", model="decusr", scale=2, channels=1,
                                               epochs=4, batch_size=16, patch_size=32, seed=1,
                                               patches_per_second=100.0)]
    lines = ["[job]", f'name = "{name}"', f'data = "{data}"']
    job_keys.setdefault("platform", "colab-free")
    for key, value in job_keys.items():
        lines.append(f"{key} = {value!r}".replace("'", '"'))
    for account, quota in accounts:
        lines += ["[[accounts]]", f'name = "{account}"', f'store = "local://stores/{account}"', f"quota_gb = {quota}"]
    for run in runs:
        lines.append("[[runs]]")
        for key, value in run.items():
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def job_dir(tmp_path):
    """A folder with 12 small images under images/; returns the folder."""
    write_images(tmp_path / "images", 12)
    return tmp_path


@pytest.fixture
def write_job(job_dir):
    """Writes job.toml into job_dir from job_text(**kwargs); returns its path."""

    def write(text: str | None = None, **kwargs) -> Path:
        path = job_dir / "job.toml"
        path.write_text(textwrap.dedent(text) if text is not None else job_text(**kwargs))
        return path

    return write

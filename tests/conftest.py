"""Shared fixtures: real images written with Pillow, and job folders with local-store accounts."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest_plugins = ["tests.drive_fixtures", "tests.drive_accounts", "tests.s3_fixtures"]


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


SMALL_RUN = dict(name="r", model="espcn", scale=2, channels=1, epochs=1, batch_size=4, patch_size=16)
"""A run small enough for tests that only plan it or sign in (one epoch of a small ESPCN)."""


def toml_value(value) -> str:
    """Returns `value` written as a TOML value: a string, number, boolean, list or inline table."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return str(value)


def job_text(name: str = "test-job", data: str = "images/", accounts=None, runs=None, job_lines: str = "",
             **job_keys) -> str:
    """Returns a job file.

    `accounts`: a list of (name, quota_gb) for local stores under stores/, or of dicts with an
    account's keys (a Drive account: name, store, token, auth, credentials, quota_gb), or TOML text
    of [[accounts]] tables, used as it is. `runs`: a list of dicts. `job_keys`: more [job] keys
    (platform is colab-free unless given; None leaves a key out); `job_lines`: TOML lines added to
    [job] as they are.
    """
    accounts = accounts if accounts is not None else [("alice", 15), ("bob", 15)]
    runs = runs if runs is not None else [dict(name="decusr-x2", model="decusr", scale=2, channels=1,
                                               epochs=4, batch_size=16, patch_size=32, seed=1,
                                               patches_per_second=100.0)]
    lines = ["[job]", f'name = "{name}"', f'data = "{data}"']
    job_keys.setdefault("platform", "colab-free")
    lines += [f"{key} = {toml_value(value)}" for key, value in job_keys.items() if value is not None]
    if job_lines:
        lines.append(job_lines.strip("\n"))
    if isinstance(accounts, str):
        lines.append(accounts.strip("\n"))
    else:
        accounts = [dict(name=account[0], store=f"local://stores/{account[0]}", quota_gb=account[1])
                    if isinstance(account, tuple) else account for account in accounts]
        lines += tables("accounts", accounts)
    lines += tables("runs", runs)
    return "\n".join(lines) + "\n"


def tables(name: str, rows) -> list[str]:
    """Returns the lines of an array of TOML tables `[[name]]`, one a dict of `rows`."""
    lines = []
    for row in rows:
        lines.append(f"[[{name}]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in row.items()]
    return lines


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

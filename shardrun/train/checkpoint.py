"""The checkpoint file: weights, optimizer state, step and RNG state in one `.ckpt.npz`, written
atomically and read back with its format checked; and the errors training raises.

A checkpoint is the unit every resume starts from, on any machine, so it is read without the
trainer (export, the demo's scores) and its errors name the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from shardrun.errors import ShardrunError


CHECKPOINT_FORMAT = "shardrun-checkpoint"


CHECKPOINT_VERSION = 1


CHECKPOINT_SUFFIX = ".ckpt.npz"


class TrainingError(ShardrunError):
    """Training cannot start or continue as asked."""


class CheckpointError(TrainingError):
    """No usable checkpoint among those given."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint of a different model or data layout than this run's."""


def checkpoint_filename(step: int) -> str:
    """Returns the local file name of the checkpoint at `step` (sortable by step)."""
    return f"step-{step:012d}{CHECKPOINT_SUFFIX}"


def file_sha256(path: Path) -> str:
    """Returns the sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path | str) -> tuple[dict[str, Any], list[np.ndarray], list[np.ndarray]]:
    """Returns (meta, weights, optimizer variables) of a checkpoint file.

    Raises CheckpointError when the file cannot be read or is not a shardrun checkpoint.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a shardrun checkpoint")
        if meta.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"version {meta.get('version')!r}, expected {CHECKPOINT_VERSION}")
        weights = [arrays[f"weights/{i:04d}"] for i in range(meta["weights"])]
        slots = [arrays[f"optimizer/{i:04d}"] for i in range(meta["optimizer_variables"])]
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        reason = str(error) or type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read: {reason}") from error
    return meta, weights, slots


def write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


# What a checkpoint file holds besides its arrays' bytes: per array, the zip entry and .npy
# headers (measured about 280-330 bytes), and the meta (JSON: model, data layout, RNG state).
ARRAY_OVERHEAD_BYTES = 512
META_BYTES = 16 * 1024


def estimated_size(model) -> int:
    """Returns about how many bytes (a little more, never less) a checkpoint of `model` takes: its
    weights, the optimizer's two float32 moments per trainable weight and its step and rate, as
    `Trainer.save_checkpoint` writes them (uncompressed .npz)."""
    weights = [int(np.prod(w.shape)) * np.dtype(w.dtype.name if hasattr(w.dtype, "name") else w.dtype).itemsize
               for w in model.weights]
    trainable = [int(np.prod(w.shape)) for w in model.trainable_weights]
    arrays = len(weights) + 2 * len(trainable) + 2
    return sum(weights) + 8 * sum(trainable) + 8 + arrays * ARRAY_OVERHEAD_BYTES + META_BYTES

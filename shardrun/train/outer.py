"""The outer step of a collaborative run (DiLoCo: Douillard et al. 2023; OpenDiLoCo 2024).

Each replica trains from the round's global weights for H inner steps and hands in its change of
weights. The outer step averages the changes in replica order and applies SGD with Nesterov
momentum to the negated mean (the "outer gradient"):

    g = -(1/N) * sum_i change_i          (in replica order, float32)
    m = mu * m + g
    global = global - lr * (g + mu * m)

It is numpy on the CPU in float32 with a fixed order of operations, so every worker that computes
a round's step from the same inputs gets the same bytes, and the journal can accept whichever
copy arrives first. Arrays travel in `pack`'s format, which holds nothing but the arrays (a zip,
as numpy writes it, stamps the time of writing).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np

from shardrun.errors import ShardrunError

PACK_MAGIC = b"SRARR1\n"


class OuterStepError(ShardrunError):
    """The changes handed in cannot be combined (no replica, unlike shapes, non-finite values)."""


@dataclass(frozen=True)
class OuterSettings:
    learning_rate: float = 0.7
    momentum: float = 0.9  # Nesterov


def change_of(start: list[np.ndarray], end: list[np.ndarray]) -> list[np.ndarray]:
    """Returns a replica's change of weights over a round (end - start, float32)."""
    _check_alike("the replica's weights", start, end)
    return [np.subtract(e, s, dtype=np.float32) for s, e in zip(start, end)]


def outer_step(weights: list[np.ndarray], momentum: list[np.ndarray] | None, changes: list[list[np.ndarray]],
               settings: OuterSettings) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Returns the round's new global weights and outer momentum.

    `changes` are the replicas' changes in replica order (the order is part of the result: float
    addition is not associative). `momentum` None starts it at zeros (the first round).
    """
    if not changes:
        raise OuterStepError("a round needs the change of at least one replica")
    for i, change in enumerate(changes):
        _check_alike(f"replica {i}'s change", weights, change)
        if not all(np.isfinite(c).all() for c in change):
            raise OuterStepError(f"replica {i}'s change holds NaN or infinite values")
    if momentum is None:
        momentum = [np.zeros_like(w, dtype=np.float32) for w in weights]
    _check_alike("the outer momentum", weights, momentum)
    lr, mu, count = np.float32(settings.learning_rate), np.float32(settings.momentum), np.float32(len(changes))
    new_weights, new_momentum = [], []
    for k, w in enumerate(weights):
        total = np.zeros_like(w, dtype=np.float32)
        for change in changes:
            total = total + change[k]
        gradient = -(total / count)
        m = mu * momentum[k] + gradient
        new_weights.append((w.astype(np.float32) - lr * (gradient + mu * m)).astype(np.float32))
        new_momentum.append(m.astype(np.float32))
    return new_weights, new_momentum


def _check_alike(what: str, reference: list[np.ndarray], arrays: list[np.ndarray]) -> None:
    if len(arrays) != len(reference) or any(np.shape(a) != np.shape(r) for a, r in zip(arrays, reference)):
        raise OuterStepError(f"{what} does not have the model's shapes "
                             f"({[np.shape(a) for a in arrays]} against {[np.shape(r) for r in reference]})")


# -- bytes on the store ---------------------------------------------------------------------------


def pack(arrays: list[np.ndarray]) -> bytes:
    """Returns the arrays as bytes that depend on nothing but their values (float32, little-endian)."""
    header = json.dumps([list(np.shape(a)) for a in arrays], separators=(",", ":")).encode()
    body = b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays)
    return PACK_MAGIC + struct.pack("<I", len(header)) + header + body


def packed_size(shapes: list[tuple[int, ...]]) -> int:
    """Returns the bytes `pack` writes for arrays of these shapes: what one replica's change (or
    the global weights, or the outer momentum) takes on the store."""
    header = json.dumps([[int(d) for d in s] for s in shapes], separators=(",", ":")).encode()
    return len(PACK_MAGIC) + 4 + len(header) + 4 * sum(int(np.prod(s, dtype=np.int64)) for s in shapes)


def unpack(data: bytes, where: str = "the object") -> list[np.ndarray]:
    """Returns the arrays of `pack`'s bytes; raises OuterStepError naming `where` when malformed."""
    if not data.startswith(PACK_MAGIC) or len(data) < len(PACK_MAGIC) + 4:
        raise OuterStepError(f"{where} is not a shardrun array file")
    at = len(PACK_MAGIC)
    (length,) = struct.unpack_from("<I", data, at)
    at += 4
    try:
        shapes = json.loads(data[at:at + length])
        assert isinstance(shapes, list) and all(isinstance(s, list) and all(isinstance(d, int) and d >= 0 for d in s)
                                                for s in shapes)
    except (ValueError, AssertionError):
        raise OuterStepError(f"{where} has a malformed header") from None
    at += length
    arrays = []
    for shape in shapes:
        size = 4 * int(np.prod(shape, dtype=np.int64))
        if at + size > len(data):
            raise OuterStepError(f"{where} is truncated")
        arrays.append(np.frombuffer(data, dtype="<f4", count=size // 4, offset=at).reshape(shape).astype(np.float32))
        at += size
    if at != len(data):
        raise OuterStepError(f"{where} has {len(data) - at} bytes past its arrays")
    return arrays


def digest(arrays: list[np.ndarray]) -> str:
    """Returns the sha256 of the packed arrays (what two workers compare a round's result by)."""
    return hashlib.sha256(pack(arrays)).hexdigest()

"""How long a backend retries a failing call before it gives up with TransientError.

Shared by the Drive and fsspec backends, so both retry the same way: jittered exponential
backoff (tenacity), bounded by a number of attempts and a total time, whichever comes first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How long a failing call is retried before TransientError: whichever limit comes first."""

    attempts: int = 8
    total_seconds: float = 300.0
    first_wait_seconds: float = 1.0  # the backoff's scale: waits grow as 1, 2, 4 ... seconds, jittered
    max_wait_seconds: float = 32.0

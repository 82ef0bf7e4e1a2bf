"""The deterministic computations behind each task type: the result depends only on the payload.

registry.execute(type, payload) dispatches here. The simulated duration (complexity x
TASK_UNIT_SECONDS) and the time limit are the worker's business, not these functions'.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable


class TaskFailed(Exception):
    """The task's own failure (the `fail` type, or a computation that cannot complete)."""


def primes(n: int) -> int:
    """Number of primes <= n, by a sieve of Eratosthenes over a bytearray (5e6 in ~0.1 s)."""
    if n < 2:
        return 0
    sieve = bytearray([1]) * (n + 1)
    sieve[0] = sieve[1] = 0
    for p in range(2, math.isqrt(n) + 1):
        if sieve[p]:
            # Slice assignment keeps the inner loop in C.
            sieve[p * p :: p] = bytes(len(range(p * p, n + 1, p)))
    return sum(sieve)


def hash_rounds(data: str, rounds: int = 1) -> str:
    """Hex SHA-256 of the UTF-8 data, re-hashed over the raw digest `rounds` times in total."""
    digest = data.encode("utf-8")
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def sleep(seconds: float = 0, pause: Callable[[float], None] = time.sleep) -> dict[str, float]:
    """Sleeps for real (it is the type for exercising time limits and long tasks)."""
    if seconds > 0:
        pause(seconds)
    return {"slept": seconds}


def fail(message: str = "task failed as requested") -> None:
    raise TaskFailed(message)

"""The one retry/backoff policy of taskcore and the worker fleet: how long to wait after a failure.

Every loop that tries again uses a `Backoff`: a Redis call retried while Redis is unreachable
(taskcore.results, the worker's mark_running), a worker reconnecting to the broker or re-publishing
what the broker refused, the fleet restarting a worker that died, and a failed task's retry delay.

A small policy object rather than tenacity (or redis-py's Retry): only one of these loops is a plain
"call until it works" (mark_running, which `Backoff.call` serves); the others wait in the worker's
event loop without blocking it (a timer per job, or a failure streak across sessions), or stop on
the time left in a Lambda invocation, or compute a delay that the broker waits out (a delay
queue). They need the delays, not a decorator, and this keeps the Lambda layer free of one more
dependency. localfaas has its own (it knows nothing of taskcore).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Pauses after 1, 2, 3 ... failures in a row: `pauses[n-1]`, the last one repeating, each
    multiplied by a random factor in [1 - jitter, 1 + jitter] (so that a fleet that lost its broker
    at once does not come back in lockstep)."""

    pauses: tuple[float, ...]
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not self.pauses or min(self.pauses) < 0 or not 0 <= self.jitter < 1:
            raise ValueError(f"a backoff needs pauses >= 0 and 0 <= jitter < 1: {self}")

    @classmethod
    def doubling(cls, first: float, cap: float, jitter: float = 0.0) -> Backoff:
        """first, 2*first, 4*first ... up to cap, then cap."""
        if first <= 0:
            raise ValueError("a doubling backoff starts above 0")
        pauses, pause = [], first
        while pause < cap:
            pauses.append(pause)
            pause *= 2
        return cls((*pauses, cap), jitter)

    def pause(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1-based)."""
        base = self.pauses[min(max(failures, 1), len(self.pauses)) - 1]
        return base * random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else base

    def call(self, function: Callable[[], T], retry_on: type[BaseException] | tuple[type[BaseException], ...],
             tries: int, sleep: Callable[[float], None] = time.sleep) -> T:
        """`function()`, called again after each failure in `retry_on` (with this backoff's pause)
        until it returns or has failed `tries` times; then its last error is raised."""
        for failures in range(1, tries + 1):
            try:
                return function()
            except retry_on:
                if failures == tries:
                    raise
                sleep(self.pause(failures))
        raise AssertionError("unreachable: the loop returns or raises")

    def streak(self) -> Streak:
        return Streak(self)


class Streak:
    """Failures in a row, for a loop that waits by itself: `next()` counts one more and gives its
    pause, `reset()` after a success."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return self.backoff.pause(self.failures)

    def reset(self) -> None:
        self.failures = 0


# Redis unreachable: tried again soon, then every 2 s (the result handler while its invocation has
# time left; a worker's mark_running, which then runs the attempt without it).
REDIS_RETRY = Backoff((0.2, 0.5, 1.0, 2.0))
# A broker connection lost, a worker process dead: doubling from 0.5 s to 10 s, +-20% jitter.
RECONNECT = Backoff.doubling(0.5, 10.0, jitter=0.2)
# A publication the broker nacked or could not route, re-sent by the worker (the task stays unacked).
REPUBLISH = Backoff.doubling(0.5, 5.0)
# Longest wait between two attempts of a task, whatever TASK_UNIT_SECONDS is.
MAX_TASK_RETRY_SECONDS = 60.0
# Shortest base of a task's retry delay: with TASK_UNIT_SECONDS=0 (benchmarks) retries still back off.
MIN_TASK_RETRY_BASE_SECONDS = 0.1


def task_retry(task_unit_seconds: float) -> Backoff:
    """A failed task's retry delays: one task unit (at least 0.1 s), doubling, capped at 60 s, so
    that tests with small units retry fast."""
    return Backoff.doubling(max(MIN_TASK_RETRY_BASE_SECONDS, task_unit_seconds), MAX_TASK_RETRY_SECONDS)

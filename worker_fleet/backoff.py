"""Exponential backoff with jitter, for reconnecting and for restarting a crashed worker."""

from __future__ import annotations

import random


class Backoff:
    """`next()` gives first, 2*first, 4*first ... capped at `cap`, each with +-20% jitter so that a
    fleet that lost its broker at once does not reconnect in lockstep; `reset()` after a success."""

    def __init__(self, first: float = 0.5, cap: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2 ** self.failures)
        self.failures += 1
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.failures = 0

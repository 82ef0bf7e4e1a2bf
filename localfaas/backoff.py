"""localfaas's one retry policy: how long to wait before the next try of something that failed.

Two loops use it: the MQ mapping's reconnects (0.5 s doubling to 5 s, for as long as the broker is
away, from 0.5 s again once a connection was up) and the host's retries of a failed Event
invocation (Lambda's: two retries, about one and then two minutes apart).

Not tenacity: neither loop is a plain retry of a call. The mapping's consumer thread waits on its
stop event, so that stop() is never held up by a sleep, and starts over from the first delay
whenever a connection came up; the Event retries are decided by the function's outcome, not an
exception, and each is logged. What both share is the schedule of delays, which is all this is.
taskcore has a policy of its own (taskcore/backoff.py) that localfaas does not import: localfaas
knows nothing of tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential delays: `first`, then each `factor` times the one before, never over `limit`."""

    first: float
    factor: float = 2.0
    limit: float = math.inf

    def __post_init__(self) -> None:
        if self.first < 0 or self.factor < 1 or self.limit < self.first:
            raise ValueError(f"a backoff needs 0 <= first <= limit and factor >= 1, not {self}")

    def delay(self, retry: int) -> float:
        """The wait before retry number `retry` (0 is the first retry)."""
        try:
            return min(self.first * self.factor ** retry, self.limit)
        except OverflowError:  # an outage long enough to pass 1e308: the limit, long since
            return self.limit

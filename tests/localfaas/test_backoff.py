"""localfaas's retry policy (localfaas/backoff.py): the schedules its two loops wait by."""

from __future__ import annotations

import math

import pytest

from localfaas.backoff import Backoff
from localfaas.host import ASYNC_RETRIES
from localfaas.mq import RECONNECT_BACKOFF


def test_mq_reconnects_double_from_half_a_second_to_five() -> None:
    assert [RECONNECT_BACKOFF.delay(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_event_invocations_are_retried_twice_one_then_two_periods_apart() -> None:
    backoff = Backoff(first=60.0)
    assert ASYNC_RETRIES == 2
    assert [backoff.delay(n) for n in range(ASYNC_RETRIES)] == [60.0, 120.0]
    assert Backoff(first=0.0).delay(1) == 0.0  # --async-retry-seconds 0: retry at once


def test_a_very_long_outage_waits_the_limit_rather_than_overflowing() -> None:
    assert RECONNECT_BACKOFF.delay(5000) == 5.0
    assert Backoff(first=1.0).delay(5000) == math.inf


@pytest.mark.parametrize("arguments", [
    {"first": -1.0}, {"first": 1.0, "factor": 0.5}, {"first": 2.0, "limit": 1.0},
])
def test_a_schedule_that_makes_no_sense_is_refused(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="a backoff needs"):
        Backoff(**arguments)

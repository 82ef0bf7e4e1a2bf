"""taskcore.backoff: the one retry policy, without services."""

from __future__ import annotations

import pytest

from taskcore.backoff import RECONNECT, REDIS_RETRY, REPUBLISH, Backoff, task_retry


def test_pauses_follow_the_schedule_and_the_last_one_repeats() -> None:
    assert [REDIS_RETRY.pause(n) for n in range(1, 7)] == [0.2, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [REPUBLISH.pause(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert Backoff.doubling(0.1, 60).pauses == (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 60)
    assert Backoff.doubling(5.0, 1.0).pauses == (1.0,)  # a first pause above the cap is the cap
    assert task_retry(0.0).pause(1) == 0.1 and task_retry(1.0).pause(2) == 2.0
    assert task_retry(5.0).pause(10) == 60.0


def test_jitter_stays_within_its_fraction_and_varies() -> None:
    pauses = [RECONNECT.pause(1) for _ in range(200)]
    assert all(0.4 <= p <= 0.6 for p in pauses) and len(set(pauses)) > 1
    assert all(8.0 <= RECONNECT.pause(n) <= 12.0 for n in (6, 50))


def test_a_streak_counts_failures_until_reset() -> None:
    streak = Backoff((1.0, 2.0, 3.0)).streak()
    assert [streak.next(), streak.next(), streak.next(), streak.next()] == [1.0, 2.0, 3.0, 3.0]
    streak.reset()
    assert streak.next() == 1.0


def test_call_retries_the_named_errors_only_and_gives_up_after_its_tries() -> None:
    slept: list[float] = []
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "up"

    assert REDIS_RETRY.call(flaky, ConnectionError, tries=5, sleep=slept.append) == "up"
    assert slept == [0.2, 0.5]
    slept.clear()
    calls.clear()
    with pytest.raises(ConnectionError):
        REDIS_RETRY.call(flaky, ConnectionError, tries=2, sleep=slept.append)
    assert slept == [0.2]
    with pytest.raises(KeyError):  # not retried: raised at once
        REDIS_RETRY.call(lambda: {}["x"], ConnectionError, tries=5, sleep=slept.append)
    assert slept == [0.2]


def test_a_policy_refuses_what_would_not_back_off() -> None:
    for bad in (lambda: Backoff(()), lambda: Backoff((-1.0,)), lambda: Backoff((1.0,), jitter=1.0),
                lambda: Backoff.doubling(0.0, 1.0)):
        with pytest.raises(ValueError):
            bad()

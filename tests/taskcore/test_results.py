"""taskcore.results: a batch of result messages read and stored, and Redis outages ridden out
within the invocation's time."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import redis

from taskcore import results
from taskcore.messages import Task, TaskResult, TaskSpec
from taskcore.store import TaskStore, now_ms
from tests.taskcore.conftest import CLOSED_PORT_REDIS, make_settings

NOW = now_ms()


def event(*bodies: bytes) -> dict[str, Any]:
    return {"eventSource": "aws:rmq", "rmqMessagesByQueue": {"results::/": [
        {"data": base64.b64encode(body).decode(), "redelivered": False, "basicProperties": {}}
        for body in bodies]}}


def admitted(store: TaskStore, task_id: str) -> Task:
    task = Task.from_spec(TaskSpec("hash", {"data": task_id, "rounds": 1}, 1, task_id), NOW)
    store.admit([task], NOW)
    return task


def outcome(task: Task) -> TaskResult:
    return TaskResult(task.task_id, task.fingerprint, "succeeded", "w1", NOW, NOW + 1, 1, result="r")


class Clock:
    """The invocation's time left, spent only by the handler's pauses (recorded)."""

    def __init__(self, left_ms: int) -> None:
        self.left_ms, self.pauses = left_ms, []

    def remaining(self) -> int:
        return self.left_ms

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.left_ms -= int(seconds * 1000)


class DeadLetters(list):
    """What the handler dead-letters (the app publishes it to results.dead)."""

    def __call__(self, messages: list[tuple[bytes, str]]) -> None:
        self.extend(body for body, _ in messages)


def test_a_batch_is_stored_and_what_is_not_a_result_is_dead_lettered(store: TaskStore) -> None:
    a, b = admitted(store, "a"), admitted(store, "b")
    dead = DeadLetters()
    summary = results.store_batch(store, event(outcome(a).to_json(), b"not json", outcome(b).to_json(),
                                               outcome(a).to_json()), Clock(30_000).remaining, dead)
    assert summary == {"stored": 2, "duplicates": 1, "dead_lettered": 1, "attempts": 1}
    assert store.get("b")["result"] == "r" and dead == [b"not json"]


def test_redis_down_is_retried_until_the_invocation_would_time_out() -> None:
    down = TaskStore(make_settings("unused.", redis_url=CLOSED_PORT_REDIS, redis_timeout=0.5))
    clock = Clock(10_000)
    with pytest.raises(redis.ConnectionError):
        task = Task.from_spec(TaskSpec("sleep", {}, 1, "x"), NOW)
        results.store_batch(down, event(outcome(task).to_json()), clock.remaining, DeadLetters(), clock.sleep)
    # 10 s less 5.7 s of pauses: one more pause of 2 s would leave less than the margin.
    assert clock.pauses == [0.2, 0.5, 1.0, 2.0, 2.0]
    assert clock.left_ms >= results.MARGIN_MS


class Outage(TaskStore):
    """The real store, whose first `failures` completions find Redis unreachable."""

    def __init__(self, store: TaskStore, failures: int) -> None:
        super().__init__(store.settings, store.redis)
        self.failures = failures

    def complete(self, batch: Any, now: int | None = None) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise redis.ConnectionError("Connection refused")
        return super().complete(batch, now)


def test_a_short_outage_costs_nothing(store: TaskStore) -> None:
    task = admitted(store, "c")
    clock = Clock(30_000)
    summary = results.store_batch(Outage(store, 2), event(outcome(task).to_json()), clock.remaining,
                                  DeadLetters(), clock.sleep)
    assert summary["stored"] == 1 and summary["attempts"] == 3 and clock.pauses == [0.2, 0.5]
    assert store.get("c")["status"] == "succeeded"


def test_a_result_that_cannot_be_stored_is_dead_lettered_alone(store: TaskStore) -> None:
    good, bad = admitted(store, "good"), admitted(store, "bad")
    store.redis.delete(store.keys.task("bad"))
    store.redis.set(store.keys.task("bad"), "not a hash")  # a corrupted record: WRONGTYPE in the script
    clock, dead = Clock(30_000), DeadLetters()
    summary = results.store_batch(store, event(outcome(bad).to_json(), outcome(good).to_json()),
                                  clock.remaining, dead, clock.sleep)
    # No waiting (it cannot help), the poison one dead-lettered, its good neighbour stored.
    assert clock.pauses == [] and dead == [outcome(bad).to_json()]
    assert summary["stored"] == 1 and summary["dead_lettered"] == 1
    assert store.get("good")["status"] == "succeeded"

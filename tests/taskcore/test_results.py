"""taskcore.results: a batch of result messages read and stored, Redis outages ridden out within
the invocation's time, and results for ids without a record dropped (also through the real result
handler's app)."""

from __future__ import annotations

import base64
import importlib.util
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from taskcore import results
from taskcore.messages import Task, TaskResult, TaskSpec
from taskcore.store import TaskStore, now_ms
from tests.taskcore.conftest import CLOSED_PORT_REDIS, Namespace, make_settings

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
    assert summary == {"stored": 2, "duplicates": 1, "unknown": 0, "dead_lettered": 1, "attempts": 1}
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


# Results for ids without a record ------------------------------------------------------------------

def result_for(task_id: str, fingerprint: str = "f" * 64) -> TaskResult:
    return TaskResult(task_id, fingerprint, "succeeded", "w1", NOW, NOW + 1, 1, result="r")


def test_a_result_nobody_submitted_is_dropped_with_a_log_line(store: TaskStore, ns: Namespace,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    known = admitted(store, "known")
    dead = DeadLetters()
    with caplog.at_level(logging.WARNING, logger="taskcore.results"):
        summary = results.store_batch(store, event(outcome(known).to_json(), result_for("ghost").to_json()),
                                      Clock(30_000).remaining, dead)
    assert summary == {"stored": 1, "duplicates": 0, "unknown": 1, "dead_lettered": 0, "attempts": 1}
    assert store.get("ghost") is None and dead == []
    assert not store.redis.exists(ns.keys.done("ghost"), ns.keys.result("f" * 64))
    assert store.stats(NOW)["tasks"]["succeeded"] == 1  # counted once: the known task
    assert "result for unknown task ghost dropped" in caplog.text


def test_a_late_result_after_the_record_expired_does_not_bring_it_back(store: TaskStore,
                                                                        ns: Namespace) -> None:
    task = admitted(store, "late")
    assert store.mark_running("late", "w1", 1, NOW) == "running"
    # What RESULT_TTL after the time limits does: the record goes, and its claim on the fingerprint
    # before it (a record outlives its claim).
    for key in (ns.keys.task("late"), ns.keys.inflight(task.fingerprint)):
        store.redis.pexpire(key, 1)
    time.sleep(0.05)
    assert store.complete([outcome(task)]) == ["unknown"]
    assert store.get("late") is None and not store.redis.exists(ns.keys.result(task.fingerprint))


def test_followers_of_a_leader_whose_record_was_removed_still_get_its_result(store: TaskStore,
                                                                              ns: Namespace) -> None:
    def same_work(task_id: str) -> Task:
        return Task.from_spec(TaskSpec("hash", {"data": "same work", "rounds": 1}, 1, task_id), NOW)

    leader, follower = same_work("leader"), same_work("follower")
    store.admit([leader], NOW)
    store.admit([follower], NOW)
    assert store.get("follower")["cache"] == "coalesced"
    store.redis.delete(ns.keys.task("leader"))  # removed by hand: its claim on the fingerprint stays
    assert store.complete([outcome(leader)]) == ["unknown_leader"]
    assert store.get("leader") is None
    assert store.get("follower")["status"] == "succeeded" and store.get("follower")["result"] == "r"
    assert store.redis.get(ns.keys.result(leader.fingerprint)) == b'"r"'
    assert not store.redis.exists(ns.keys.inflight(leader.fingerprint))
    # The next task of that work is a cache hit, not a follower of a leader that will never end.
    assert store.admit([same_work("next")], NOW)[0].outcome == "hit"


def load_result_handler(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Any:
    """functions/result_handler/app.py as Lambda loads it, configured from the environment."""
    for name, value in (("NAMESPACE", settings.namespace), ("REDIS_URL", settings.redis_url),
                        ("RABBITMQ_URL", settings.rabbitmq_url)):
        monkeypatch.setenv(name, value)
    path = Path(__file__).parents[2] / "functions" / "result_handler" / "app.py"
    spec = importlib.util.spec_from_file_location("app_result_handler_unknown", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_result_handler_drops_a_result_for_an_unknown_id(store: TaskStore, ns: Namespace,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    handler = load_result_handler(monkeypatch, ns.settings)
    known = admitted(store, "k1")

    class Context:
        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 30_000

    with caplog.at_level(logging.WARNING, logger="taskcore.results"):
        summary = handler.handle_results(
            event(result_for("nobody-sent-this").to_json(), outcome(known).to_json()), Context())
    assert summary["stored"] == 1 and summary["unknown"] == 1 and summary["dead_lettered"] == 0
    assert store.get("k1")["status"] == "succeeded" and store.get("nobody-sent-this") is None
    assert "result for unknown task nobody-sent-this dropped" in caplog.text

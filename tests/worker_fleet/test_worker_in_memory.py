"""The worker (worker_fleet.worker.Worker) in a thread, on the in-memory broker and the real Redis:
its settle path (publish confirmed, then ack), retries through the delay queues, a refused publication
published again, a lost connection, time limits, draining, rejects. The same worker runs as a process
against RabbitMQ in test_processing.py and test_faults.py; here each case takes a fraction of a second."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskcore.keys import routing_key_for
from taskcore.messages import Task, TaskResult, validate_task
from taskcore.rabbitmq import Delivery, QueueNotFound
from taskcore.rabbitmq.memory import MemoryBroker
from taskcore.settings import Settings
from taskcore.store import TaskStore, now_ms
from taskfaas.stack import eventually, new_namespace
from tests.taskcore.conftest import make_settings
from worker_fleet import worker as worker_module
from worker_fleet.worker import TRANSITIONS, Worker, WorkerState


class Setup:
    """A namespace on the real Redis, an in-memory broker, and the worker's JSON log lines."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.namespace = new_namespace("t", ":")
        self.capsys = capsys
        self.lines: list[dict[str, Any]] = []
        self.settings = self.configure()
        self.store = TaskStore(self.settings, redis.Redis.from_url(self.settings.redis_url))
        self.broker = MemoryBroker(self.settings)
        self.broker.declare()
        self.keys = self.broker.keys

    def configure(self, **overrides: Any) -> Settings:
        self.settings = make_settings(self.namespace, task_unit_seconds=0.0, heartbeat_seconds=0.5,
                                      **overrides)
        return self.settings

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        out = self.capsys.readouterr().out
        self.lines += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return [e for e in self.lines if e["event"] == event and all(e.get(k) == v for k, v in match.items())]

    def submit(self, *items: dict[str, Any], to: str = "shared") -> list[str]:
        """Admits tasks in Redis (the record exists, as after POST /supervise) and publishes them to
        `to`'s queue ("shared" for the shared queue); their ids."""
        tasks = [Task.from_spec(validate_task(item).with_id(uuid.uuid4().hex), now_ms()) for item in items]
        self.store.admit(tasks, now_ms())
        self.broker.publish_tasks([(routing_key_for(to), task) for task in tasks])
        return [task.task_id for task in tasks]

    def take(self, queue: str) -> list[Delivery]:
        """Takes every ready message off `queue` (none while it does not exist)."""
        got = []
        with self.broker.reader(queue) as reader:
            try:
                while (delivery := reader.get()) is not None:
                    reader.ack(delivery.tag)
                    got.append(delivery)
            except QueueNotFound:
                pass
        return got

    def results(self, count: int, timeout: float = 10) -> list[TaskResult]:
        found: list[TaskResult] = []

        def enough() -> bool:
            found.extend(TaskResult.from_json(d.body) for d in self.take(self.keys.results_queue))
            return len(found) >= count

        eventually(enough, timeout, lambda: f"{count} results, have {found}; log {self.lines[-20:]}")
        return found

    def close(self) -> None:
        doomed = list(self.store.redis.scan_iter(match=f"{self.namespace}*", count=1000))
        if doomed:
            self.store.redis.delete(*doomed)
        self.store.redis.close()


class Running:
    """A Worker run in a thread until the block ends (stopped as SIGTERM stops it)."""

    def __init__(self, setup: Setup, concurrency: int = 2, grace: float = 5.0,
                 worker_id: str = "w-0") -> None:
        self.worker = Worker(setup.settings, setup.broker, worker_id, concurrency, grace)
        self.thread = threading.Thread(target=self.worker.run, name=f"worker {worker_id}", daemon=True)

    def __enter__(self) -> Worker:
        self.thread.start()
        eventually(lambda: self.worker.state is WorkerState.CONSUMING, 5, "the worker consuming")
        return self.worker

    def __exit__(self, *_exc: object) -> None:
        self.worker.stop()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive() and self.worker.state is WorkerState.STOPPED


@pytest.fixture
def setup(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    # The stop flag is seen after each poll: a shorter one stops the worker at once when a test ends.
    monkeypatch.setattr(worker_module, "POLL_SECONDS", 0.02)
    environment = Setup(capsys)
    try:
        yield environment
    finally:
        environment.close()


def test_results_are_published_confirmed_and_only_then_the_tasks_acked(setup: Setup) -> None:
    with Running(setup):
        ids = setup.submit({"type": "primes", "payload": {"n": 100}},
                           {"type": "hash", "payload": {"data": "x"}})
        results = {r.task_id: r for r in setup.results(2)}
        assert sorted(results) == sorted(ids)
        primes = results[ids[0]]
        assert (primes.status, primes.result, primes.attempt) == ("succeeded", 25, 1)
        eventually(lambda: len(setup.events("result_published")) == 2, 5, "both results logged as confirmed")
    # Acked: nothing came back to a queue when the worker's connection closed.
    assert setup.broker.depths([setup.keys.shared_queue, setup.keys.worker_queue("w-0")]) == {
        setup.keys.shared_queue: 0, setup.keys.worker_queue("w-0"): 0}
    assert [e["status"] for e in setup.events("executed")] == ["succeeded", "succeeded"]


def test_a_failing_task_is_retried_through_the_delay_queues_then_failed(setup: Setup) -> None:
    with Running(setup, concurrency=1):
        [failing] = setup.submit({"type": "fail", "payload": {"message": "boom"}})
        [result] = setup.results(1)
    assert (result.task_id, result.status, result.error, result.attempt) == (failing, "failed", "boom", 3)
    # Backoff doubles from one task unit, floored at 0.1 s: 100 ms, then 200 ms.
    assert [e["delay_ms"] for e in setup.events("retry_scheduled")] == [100, 200]
    assert [e["attempt"] for e in setup.events("executed", task_id=failing)] == [1, 2, 3]


def test_a_refused_publication_keeps_its_outcome_and_is_published_again(setup: Setup) -> None:
    with Running(setup, concurrency=1):
        [task_id] = setup.submit({"type": "sleep", "payload": {"seconds": 0.3}})
        eventually(lambda: setup.events("started", task_id=task_id), 5, "the task started")
        # The results queue deleted under the worker: its result is unroutable, the task stays
        # unacked, the worker redeclares the topology and publishes the same outcome again.
        setup.broker.delete_queue(setup.keys.results_queue)
        [result] = setup.results(1)
    assert (result.task_id, result.status) == (task_id, "succeeded")
    [failed] = setup.events("publish_failed", task_id=task_id)
    assert (failed["verdict"], failed["retry_in"]) == ("unroutable", 0.5)
    assert len(setup.events("executed", task_id=task_id)) == 1  # the work was not redone


def test_a_lost_connection_cancels_the_attempt_and_the_task_comes_back(setup: Setup) -> None:
    with Running(setup, concurrency=1):
        [task_id] = setup.submit({"type": "sleep", "payload": {"seconds": 0.5}})
        eventually(lambda: setup.events("started", task_id=task_id), 5, "the task started")
        setup.broker.server.drop_connections(f"worker {setup.namespace}w-0")
        [result] = setup.results(1)
        assert (result.task_id, result.status) == (task_id, "succeeded")
    assert len(setup.events("broker_lost")) == 1 and len(setup.events("connected")) == 2
    assert [e["status"] for e in setup.events("executed", task_id=task_id)] == ["cancelled", "succeeded"]


def test_a_time_limit_fails_the_task_without_a_retry_and_discards_the_late_outcome(setup: Setup) -> None:
    setup.configure(task_time_limit=0.3)
    with Running(setup, concurrency=1):
        [slow] = setup.submit({"type": "sleep", "payload": {"seconds": 60}})
        [result] = setup.results(1)
        eventually(lambda: setup.events("late_outcome_discarded", task_id=slow), 5, "the late outcome")
    assert (result.status, result.attempt) == ("failed", 1)
    assert result.error is not None and "time limit exceeded" in result.error
    assert not setup.events("retry_scheduled")


def test_stopping_finishes_the_running_task_and_returns_the_waiting_one(setup: Setup) -> None:
    running = Running(setup, concurrency=1)
    with running:
        [first] = setup.submit({"type": "sleep", "payload": {"seconds": 0.5}})
        eventually(lambda: setup.events("started", task_id=first), 5, "the first started")
        # Delivered (the worker's own queue has a prefetch of its own) but waiting for the slot.
        [second] = setup.submit({"type": "sleep", "payload": {"seconds": 0.5}}, to="w-0")
        eventually(lambda: setup.broker.queue_state(setup.keys.worker_queue("w-0")).messages == 0, 5,
                   "the second delivered")
        running.worker.stop()
        running.thread.join(timeout=10)
    [result] = setup.take(setup.keys.results_queue)
    assert TaskResult.from_json(result.body).task_id == first
    [back] = setup.take(setup.keys.worker_queue("w-0"))  # requeued at once, not run
    assert json.loads(back.body)["task_id"] == second and back.redelivered
    [draining] = setup.events("draining")
    assert draining["in_hand"] == 1 and not setup.events("started", task_id=second)


def test_a_message_that_is_no_task_is_dead_lettered_not_run(setup: Setup) -> None:
    with Running(setup):
        setup.broker.publish(setup.keys.tasks_exchange, [("shared", b"not json", "x")])
        [dead] = eventually(lambda: setup.take(setup.keys.tasks_dead_queue), 5, "the message in tasks.dead")
    assert dead.body == b"not json" and dead.headers["x-death"][0]["reason"] == "rejected"
    assert len(setup.events("rejected")) == 1 and not setup.events("executed")


def test_the_worker_state_changes_only_along_its_transitions(setup: Setup) -> None:
    worker = Worker(setup.settings, setup.broker, "w-0", 1)
    assert worker.state is WorkerState.CONNECTING
    with pytest.raises(RuntimeError, match="no way from connecting to draining"):
        worker._enter(WorkerState.DRAINING)
    worker._enter(WorkerState.CONSUMING)
    worker._enter(WorkerState.DRAINING)
    worker._enter(WorkerState.STOPPED)
    assert TRANSITIONS[WorkerState.STOPPED] == frozenset()
    with pytest.raises(RuntimeError):
        worker._enter(WorkerState.CONSUMING)

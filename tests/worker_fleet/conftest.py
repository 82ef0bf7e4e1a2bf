"""Runs the real worker fleet (`python -m worker_fleet`) against the real RabbitMQ and Redis, each test
in a NAMESPACE of its own whose queues, exchanges and keys are removed afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import redis

from taskcore.keys import Keys, routing_key_for
from taskcore.messages import Task, TaskResult, validate_task
from taskcore.rabbitmq import Delivery, topology
from taskcore.rabbitmq.amqp import AmqpBroker
from taskcore.rabbitmq.pika_consumer import connection_parameters
from taskcore.settings import Settings
from taskcore.store import TaskStore, now_ms
from taskfaas.stack import REDIS_URL, eventually, new_namespace, terminated_with_parent

ROOT = Path(__file__).parents[2]


class Fleet:
    """One `python -m worker_fleet` parent process and its JSON log."""

    def __init__(self, env: dict[str, str], log_path: Path, args: list[str]) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        # SIGTERM when the test run dies: no fleet outlives it on a namespace the next run sweeps.
        self.process = subprocess.Popen([sys.executable, "-m", "worker_fleet", *args], env=env, cwd=ROOT,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        preexec_fn=terminated_with_parent)

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a traceback or warning: shown by dump() when a test fails
            if event not in (None, entry.get("event")):
                continue
            if all(entry.get(k) == v for k, v in match.items()):
                found.append(entry)
        return found

    def wait_event(self, event: str, timeout: float = 15, count: int = 1,
                   **match: Any) -> list[dict[str, Any]]:
        return eventually(lambda: len(found := self.events(event, **match)) >= count and found, timeout,
                          lambda: f"{count} x {event} {match}\n{self.dump()}")

    def dump(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)  # the workers die with it (PR_SET_PDEATHSIG)
                self.process.wait()
        self._log.close()
        return self.process.returncode


class Env:
    """A namespace with its settings, store, broker and fleets; cleans everything up on close."""

    def __init__(self, tmp_path: Path, **variables: str) -> None:
        self.namespace = new_namespace("t", ":")  # owned by this run (a killed run's is swept by the next)
        self.tmp_path = tmp_path
        self.vars = {**os.environ, "NAMESPACE": self.namespace, "TASK_UNIT_SECONDS": "0.05",
                     "HEARTBEAT_SECONDS": "0.5", "PYTHONUNBUFFERED": "1", **variables}
        self.settings = Settings.from_env(self.vars)
        self.keys = Keys(self.namespace)
        self.store = TaskStore(self.settings, redis.Redis.from_url(self.settings.redis_url))
        self.broker = AmqpBroker(self.settings)
        self.broker.declare()
        self.fleets: list[Fleet] = []
        # Every queue to remove at the end: the fleets' topologies (retry delay queues depend on
        # their settings) and their workers' queues.
        self.queues: set[str] = {queue.name for queue in self.broker.topology().queues}

    def start(self, workers: int = 1, concurrency: int = 2, grace: float = 10, prefix: str = "w",
              **env: str) -> Fleet:
        variables = {**self.vars, **env}
        worker_ids = [f"{prefix}-{i}" for i in range(workers)]
        self.queues |= {queue.name for queue in topology(Settings.from_env(variables), worker_ids).queues}
        fleet = Fleet(variables, self.tmp_path / f"fleet{len(self.fleets)}.log",
                      ["--workers", str(workers), "--concurrency", str(concurrency), "--grace", str(grace),
                       "--id-prefix", prefix])
        self.fleets.append(fleet)
        fleet.wait_event("connected", count=workers, timeout=20)
        return fleet

    def submit(self, worker_id: str, *items: dict[str, Any]) -> list[Task]:
        """Admits tasks in Redis (so the record exists, as after POST /supervise), then publishes them
        to `worker_id`'s queue ("shared" for the shared queue), with a broker confirm."""
        tasks = [Task.from_spec(validate_task(item).with_id(uuid.uuid4().hex), now_ms()) for item in items]
        self.store.admit(tasks, now_ms())
        self.broker.publish_tasks([(routing_key_for(worker_id), task) for task in tasks])
        return tasks

    def publish_raw(self, worker_id: str, body: bytes) -> None:
        message = (routing_key_for(worker_id), body, uuid.uuid4().hex)
        self.broker.publish(self.keys.tasks_exchange, [message])

    def get_all(self, queue: str) -> list[Delivery]:
        """Takes every ready message off `queue`."""
        messages = []
        with self.broker.reader(queue) as reader:
            while (delivery := reader.get()) is not None:
                reader.ack(delivery.tag)
                messages.append(delivery)
        return messages

    def results(self, count: int, timeout: float = 20) -> list[TaskResult]:
        """Takes results off the results queue until `count` arrived; more may still come later."""
        found: list[TaskResult] = []

        def enough() -> bool:
            found.extend(TaskResult.from_json(d.body) for d in self.get_all(self.keys.results_queue))
            return len(found) >= count

        eventually(enough, timeout, lambda: f"{count} results, have {found}\n{self.fleets[-1].dump()}")
        return found

    def depth(self, queue: str) -> int:
        return self.broker.queue_state(queue).messages

    def close(self) -> None:
        for fleet in self.fleets:
            fleet.stop()
        self.broker.close()
        connection = pika.BlockingConnection(connection_parameters(self.settings.rabbitmq_url, 10))
        try:
            channel = connection.channel()
            for queue in sorted(self.queues):
                channel.queue_delete(queue)  # nothing happens to one never declared
            for exchange in (self.keys.tasks_exchange, self.keys.results_exchange, self.keys.dead_exchange):
                channel.exchange_delete(exchange)
        finally:
            connection.close()
        keys = list(self.store.redis.scan_iter(match=f"{self.namespace}*", count=1000))
        if keys:
            self.store.redis.delete(*keys)
        self.store.redis.close()
        if self.settings.redis_url != REDIS_URL:
            # A private Redis: the namespace's owner marker is on the shared one (new_namespace).
            with redis.Redis.from_url(REDIS_URL) as shared:
                shared.delete(self.keys.owner)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path)
    try:
        yield environment
    finally:
        environment.close()

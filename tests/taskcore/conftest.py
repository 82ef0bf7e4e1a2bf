"""Fixtures for taskcore tests: real Redis and RabbitMQ, one fresh NAMESPACE per test, and
everything the test created removed afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pika
import pika.exceptions
import pytest
import redis

from taskcore.keys import Keys
from taskcore.rabbitmq import topology
from taskcore.rabbitmq.amqp import AmqpBroker
from taskcore.rabbitmq.pika_consumer import connection_parameters
from taskcore.settings import Settings
from taskcore.store import TaskStore

# The stack's own users under `make test`.
from taskfaas.stack import RABBITMQ_URL, REDIS_URL, new_namespace

CLOSED_PORT_AMQP = "amqp://guest:guest@127.0.0.1:1/%2F"
CLOSED_PORT_REDIS = "redis://127.0.0.1:1/0"


@dataclass
class Namespace:
    settings: Settings
    keys: Keys
    worker_ids: set[str] = field(default_factory=set)
    extra_queues: set[str] = field(default_factory=set)
    extra_exchanges: set[str] = field(default_factory=set)


def make_settings(namespace: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"rabbitmq_url": RABBITMQ_URL, "redis_url": REDIS_URL, **overrides}
    return Settings.from_env({}, namespace=namespace, **values)


@pytest.fixture
def ns() -> Iterator[Namespace]:
    prefix = new_namespace("t", ":")  # owned by this run (a killed run's is swept by the next)
    space = Namespace(make_settings(prefix), Keys(prefix))
    yield space
    _clean_rabbitmq(space)
    _clean_redis(prefix)  # the owner's marker with the rest, last


@pytest.fixture
def redis_ns() -> Iterator[Namespace]:
    """A namespace on the real Redis alone, for tests whose broker is the in-memory one."""
    prefix = new_namespace("t", ":")
    yield Namespace(make_settings(prefix), Keys(prefix))
    _clean_redis(prefix)


@pytest.fixture
def settings(ns: Namespace) -> Settings:
    return ns.settings


@pytest.fixture
def store(settings: Settings) -> TaskStore:
    return TaskStore.for_settings(settings)


@pytest.fixture
def broker(settings: Settings) -> Iterator[AmqpBroker]:
    with AmqpBroker(settings) as real:
        yield real


@pytest.fixture
def channel() -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(connection_parameters(RABBITMQ_URL, 10))
    try:
        channel = connection.channel()
        # Confirm mode, so a publish from a test has reached its queue when basic_publish returns.
        channel.confirm_delivery()
        yield channel
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


def _clean_redis(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    doomed = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if doomed:
        client.delete(*doomed)
    client.close()


def _clean_rabbitmq(space: Namespace) -> None:
    keys = space.keys
    # Every queue the topology declares (its retry delay queues too) and what the test added.
    queues = {*(queue.name for queue in topology(space.settings, space.worker_ids).queues),
              *space.extra_queues}
    exchanges = {keys.tasks_exchange, keys.results_exchange, keys.dead_exchange, *space.extra_exchanges}
    connection = pika.BlockingConnection(connection_parameters(RABBITMQ_URL, 10))
    try:
        channel = connection.channel()
        for queue in sorted(queues):
            channel.queue_delete(queue)
        for exchange in sorted(exchanges):
            channel.exchange_delete(exchange)
    finally:
        connection.close()


def count_keys(prefix: str) -> list[bytes]:
    """The namespace's keys but the owner's marker (the test harness's, not the system's)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        marker = Keys(prefix).owner.encode()
        return sorted(key for key in client.scan_iter(match=f"{prefix}*", count=1000) if key != marker)
    finally:
        client.close()

"""Topology and the confirming Publisher against the real RabbitMQ."""

from __future__ import annotations

import json
import socket
import time

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from taskcore.broker import Publisher, PublishError, declare_topology
from taskcore.messages import Task, TaskResult, TaskSpec
from taskcore.settings import Settings
from tests.taskcore.conftest import CLOSED_PORT_AMQP, Namespace, make_settings


def depth(channel: BlockingChannel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def eventual_depth(channel: BlockingChannel, queue: str, expected: int, timeout: float = 5) -> int:
    """Dead-lettering happens after the nack returns; poll until it shows."""
    deadline = time.monotonic() + timeout
    while (found := depth(channel, queue)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def test_topology(channel: BlockingChannel, ns: Namespace) -> None:
    ns.worker_ids.update({"w1", "w2"})
    declare_topology(channel, ns.settings, ["w1", "w2"])
    declare_topology(channel, ns.settings, ["w1"])  # idempotent
    k = ns.keys
    for queue in (k.shared_queue, k.results_queue, k.tasks_dead_queue, k.results_dead_queue,
                  k.worker_queue("w1"), k.worker_queue("w2")):
        assert depth(channel, queue) == 0
    # the routing of both exchanges
    channel.basic_publish(k.tasks_exchange, "w.w2", b"{}")
    channel.basic_publish(k.tasks_exchange, "shared", b"{}")
    channel.basic_publish(k.results_exchange, "results", b"{}")
    assert depth(channel, k.worker_queue("w2")) == 1
    assert depth(channel, k.shared_queue) == 1
    assert depth(channel, k.results_queue) == 1


def test_rejected_messages_are_dead_lettered(channel: BlockingChannel, ns: Namespace) -> None:
    declare_topology(channel, ns.settings)
    k = ns.keys
    channel.basic_publish(k.tasks_exchange, "shared", b"garbage")
    method, _, _ = channel.basic_get(k.shared_queue)
    channel.basic_nack(method.delivery_tag, requeue=False)
    channel.basic_publish(k.results_exchange, "results", b"garbage")
    method, _, _ = channel.basic_get(k.results_queue)
    channel.basic_nack(method.delivery_tag, requeue=False)
    assert eventual_depth(channel, k.tasks_dead_queue, 1) == 1
    assert eventual_depth(channel, k.results_dead_queue, 1) == 1


def test_poison_message_is_dead_lettered_after_the_delivery_limit(channel: BlockingChannel,
                                                                  ns: Namespace) -> None:
    settings = make_settings(ns.settings.namespace, delivery_limit=2)
    declare_topology(channel, settings)
    channel.basic_publish(ns.keys.tasks_exchange, "shared", b"poison")
    deliveries = 0
    deadline = time.monotonic() + 10
    while depth(channel, ns.keys.tasks_dead_queue) == 0 and time.monotonic() < deadline:
        method = channel.basic_get(ns.keys.shared_queue)[0]
        if method is None:
            time.sleep(0.02)  # a requeued message takes a moment to be ready again
            continue
        deliveries += 1
        channel.basic_nack(method.delivery_tag, requeue=True)
    assert deliveries == 3
    assert depth(channel, ns.keys.tasks_dead_queue) == 1


def test_publisher_confirms_a_batch(channel: BlockingChannel, ns: Namespace, publisher: Publisher) -> None:
    declare_topology(channel, ns.settings)
    tasks = [Task.from_spec(TaskSpec("primes", {"n": i + 1}, 1, f"id{i}"), 1) for i in range(500)]
    publisher.publish_tasks([("shared", t) for t in tasks])
    publisher.publish_results([TaskResult("id0", "fp", "succeeded", "w", 1, 2, 1, result=1)])
    assert depth(channel, ns.keys.shared_queue) == 500
    _, properties, body = channel.basic_get(ns.keys.shared_queue, auto_ack=True)
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert properties.message_id == "id0"
    assert Task.from_json(body) == tasks[0]
    _, properties, body = channel.basic_get(ns.keys.results_queue, auto_ack=True)
    assert json.loads(body)["task_id"] == "id0" and properties.message_id == "id0"


def test_unroutable_messages_are_reported(channel: BlockingChannel, ns: Namespace,
                                          publisher: Publisher) -> None:
    declare_topology(channel, ns.settings)
    messages = [("shared", b"{}", "a"), ("w.nobody", b"{}", "b"), ("shared", b"{}", "c")]
    with pytest.raises(PublishError) as caught:
        publisher.publish(ns.keys.tasks_exchange, messages)
    assert caught.value.unroutable == [1] and caught.value.only_unroutable
    assert depth(channel, ns.keys.shared_queue) == 2


def test_nacked_messages_raise(channel: BlockingChannel, ns: Namespace, publisher: Publisher) -> None:
    # A full queue that rejects publishes makes the broker nack: a real nack, not a simulated one.
    queue = f"{ns.settings.namespace}full"
    ns.extra_queues.add(queue)
    channel.queue_declare(queue, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    with pytest.raises(PublishError) as caught:
        publisher.publish("", [(queue, b"1", "a"), (queue, b"2", "b"), (queue, b"3", "c")])
    assert caught.value.nacked == [1, 2] and not caught.value.only_unroutable
    # the channel stays usable
    channel.queue_purge(queue)
    publisher.publish("", [(queue, b"4", "d")])
    assert depth(channel, queue) == 1


def test_unknown_exchange_raises_and_the_publisher_recovers(ns: Namespace, publisher: Publisher,
                                                            channel: BlockingChannel) -> None:
    with pytest.raises(PublishError):
        publisher.publish(f"{ns.settings.namespace}no-such-exchange", [("x", b"{}", "a")])
    declare_topology(channel, ns.settings)
    publisher.publish(ns.keys.tasks_exchange, [("shared", b"{}", "b")])
    assert depth(channel, ns.keys.shared_queue) == 1


def test_broker_unreachable_raises_publish_error(settings: Settings) -> None:
    publisher = Publisher(settings, url=CLOSED_PORT_AMQP)
    with pytest.raises(PublishError) as caught:
        publisher.publish("x", [("shared", b"{}", "a"), ("shared", b"{}", "b")])
    assert caught.value.unconfirmed == [0, 1]


def test_stale_connection_is_reopened_transparently(channel: BlockingChannel, ns: Namespace,
                                                    publisher: Publisher) -> None:
    declare_topology(channel, ns.settings)
    publisher.publish(ns.keys.tasks_exchange, [("shared", b"{}", "a")])
    first = publisher.channel.connection
    # Cut the TCP connection under pika, as an idle environment's connection is cut by the broker.
    sock = first._impl._transport._sock
    sock.shutdown(socket.SHUT_RDWR)
    publisher.publish(ns.keys.tasks_exchange, [("shared", b"{}", "b")])
    assert publisher.channel.connection is not first
    assert depth(channel, ns.keys.shared_queue) == 2


def test_channel_is_usable_for_basic_get(channel: BlockingChannel, ns: Namespace,
                                         publisher: Publisher) -> None:
    declare_topology(publisher.channel, ns.settings)
    publisher.publish(ns.keys.tasks_exchange, [("shared", b'{"x":1}', "a")])
    method, _, body = publisher.channel.basic_get(ns.keys.shared_queue, auto_ack=False)
    assert body == b'{"x":1}'
    publisher.channel.basic_ack(method.delivery_tag)
    publisher.publish(ns.keys.tasks_exchange, [("shared", b"{}", "b")])  # confirms still tracked
    assert depth(channel, ns.keys.shared_queue) == 1
    assert isinstance(publisher.channel, pika.adapters.blocking_connection.BlockingChannel)
    with pytest.raises(pika.exceptions.AMQPError):
        channel.queue_declare(f"{ns.settings.namespace}missing", passive=True)

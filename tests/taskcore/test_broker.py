"""The RabbitMQ broker (taskcore.rabbitmq.amqp) against the real RabbitMQ: the topology as declared,
confirmed publishing, and what only the real connection can show; what both brokers must do alike is
in test_broker_contract.py."""

from __future__ import annotations

import json
import socket
import time

import pytest
from pika.adapters.blocking_connection import BlockingChannel

from taskcore.messages import Task, TaskResult, TaskSpec
from taskcore.rabbitmq import QueueNotFound
from taskcore.rabbitmq.amqp import AmqpBroker
from taskfaas.stack import RABBITMQ_URL
from tests.taskcore.conftest import Namespace, make_settings


def depth(channel: BlockingChannel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def eventual_depth(channel: BlockingChannel, queue: str, expected: int, timeout: float = 5) -> int:
    """Dead-lettering happens after the nack returns; poll until it shows."""
    deadline = time.monotonic() + timeout
    while (found := depth(channel, queue)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def test_topology(channel: BlockingChannel, ns: Namespace, broker: AmqpBroker) -> None:
    ns.worker_ids.update({"w1", "w2"})
    broker.declare(["w1", "w2"])
    broker.declare(["w1"])  # idempotent
    k = ns.keys
    for queue in (k.shared_queue, k.results_queue, k.tasks_dead_queue, k.results_dead_queue,
                  k.worker_queue("w1"), k.worker_queue("w2"), k.retry_queue(1000), k.retry_queue(2000)):
        assert depth(channel, queue) == 0
    # the routing of both exchanges
    channel.basic_publish(k.tasks_exchange, "w.w2", b"{}")
    channel.basic_publish(k.tasks_exchange, "shared", b"{}")
    channel.basic_publish(k.results_exchange, "results", b"{}")
    assert depth(channel, k.worker_queue("w2")) == 1
    assert depth(channel, k.shared_queue) == 1
    assert depth(channel, k.results_queue) == 1
    # The arguments as declared: a redeclare with the same ones is accepted, one differing is refused.
    quorum = {"x-queue-type": "quorum", "x-delivery-limit": 5, "x-dead-letter-exchange": k.dead_exchange,
              "x-dead-letter-routing-key": "tasks.dead"}
    delay = {"x-queue-type": "classic", "x-message-ttl": 1000, "x-dead-letter-exchange": k.tasks_exchange,
             "x-dead-letter-routing-key": "shared"}
    for queue, arguments in ((k.shared_queue, quorum), (k.worker_queue("w1"), quorum),
                             (k.retry_queue(1000), delay)):
        channel.queue_declare(queue, durable=True, arguments=arguments)
    with pytest.raises(Exception, match="PRECONDITION_FAILED"):
        channel.queue_declare(k.retry_queue(1000), durable=True, arguments={**delay, "x-message-ttl": 999})


def test_classic_work_queues_are_declared_as_version_2_without_a_delivery_limit(
        channel: BlockingChannel, ns: Namespace) -> None:
    """QUEUE_TYPE=classic: the work queues are classic v2 (RabbitMQ 3.10 takes x-queue-version),
    durable, with the dead-letter exchange, and no x-delivery-limit (the worker counts instead)."""
    broker = AmqpBroker(make_settings(ns.settings.namespace, queue_type="classic"))
    ns.worker_ids.add("w1")
    try:
        broker.declare(["w1"])
        k = ns.keys
        classic = {"x-queue-type": "classic", "x-queue-version": 2, "x-dead-letter-exchange": k.dead_exchange,
                   "x-dead-letter-routing-key": "tasks.dead"}
        for queue in (k.shared_queue, k.worker_queue("w1")):
            channel.queue_declare(queue, durable=True, arguments=classic)  # the same: accepted
        channel.queue_declare(k.results_queue, durable=True,
                              arguments={**classic, "x-dead-letter-routing-key": "results.dead"})
        with pytest.raises(Exception, match="PRECONDITION_FAILED"):  # it is no quorum queue
            channel.queue_declare(k.shared_queue, durable=True,
                                  arguments={**classic, "x-queue-type": "quorum"})
    finally:
        broker.close()


def test_publisher_confirms_a_batch(channel: BlockingChannel, ns: Namespace, broker: AmqpBroker) -> None:
    broker.declare()
    tasks = [Task.from_spec(TaskSpec("primes", {"n": i + 1}, 1, f"id{i}"), 1) for i in range(500)]
    broker.publish_tasks([("shared", t) for t in tasks])
    broker.publish_results([TaskResult("id0", "fp", "succeeded", "w", 1, 2, 1, result=1)])
    assert depth(channel, ns.keys.shared_queue) == 500
    _, properties, body = channel.basic_get(ns.keys.shared_queue, auto_ack=True)
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert properties.message_id == "id0"
    assert Task.from_json(body) == tasks[0]
    _, properties, body = channel.basic_get(ns.keys.results_queue, auto_ack=True)
    assert json.loads(body)["task_id"] == "id0" and properties.message_id == "id0"


def test_stale_connection_is_reopened_transparently(channel: BlockingChannel, ns: Namespace,
                                                    broker: AmqpBroker) -> None:
    broker.declare()
    broker.publish(ns.keys.tasks_exchange, [("shared", b"{}", "a")])
    first = broker._link.connection  # the implementation's own: what the test cuts
    # Cut the TCP connection under py-amqp, as an idle environment's connection is cut by the broker.
    first.sock.shutdown(socket.SHUT_RDWR)
    broker.publish(ns.keys.tasks_exchange, [("shared", b"{}", "b")])
    assert broker._link.connection is not first
    assert depth(channel, ns.keys.shared_queue) == 2


def test_a_connection_the_broker_closed_while_idle_is_reopened(channel: BlockingChannel,
                                                              ns: Namespace) -> None:
    """An idle environment sends no heartbeats: the broker closes its connection after two missed
    ones (1 s here). The next publish finds the close waiting and goes out on a new connection."""
    broker = AmqpBroker(ns.settings, url=f"{RABBITMQ_URL}?heartbeat=1")
    try:
        broker.declare()
        broker.publish(ns.keys.tasks_exchange, [("shared", b"{}", "a")])
        first = broker._link.connection  # the implementation's own
        assert first.heartbeat == 1
        time.sleep(4)  # no reads, no heartbeats: the broker gives up on us
        broker.publish(ns.keys.tasks_exchange, [("shared", b"{}", "b")])
        assert broker._link.connection is not first
        assert depth(channel, ns.keys.shared_queue) == 2
    finally:
        broker.close()


def test_gets_on_the_brokers_connection_keep_its_confirms_tracked(channel: BlockingChannel, ns: Namespace,
                                                                  broker: AmqpBroker) -> None:
    broker.declare()
    broker.publish(ns.keys.tasks_exchange, [("shared", b'{"x":1}', "a")])
    with broker.reader(ns.keys.shared_queue) as reader:
        delivery = reader.get()
        assert delivery is not None and delivery.body == b'{"x":1}' and delivery.message_id == "a"
        reader.ack(delivery.tag)
        broker.publish(ns.keys.tasks_exchange, [("shared", b"{}", "b")])  # confirms still tracked
    assert depth(channel, ns.keys.shared_queue) == 1
    # A 404 closes only the inspection channel, and comes out as the project's error, not pika's.
    with pytest.raises(QueueNotFound):
        broker.queue_state(f"{ns.settings.namespace}missing")
    assert broker.queue_state(ns.keys.shared_queue).messages == 1


def test_a_consumers_ack_leaves_with_its_next_poll_and_what_it_holds_returns_on_close(
        channel: BlockingChannel, ns: Namespace, broker: AmqpBroker) -> None:
    broker.declare()
    broker.publish(ns.keys.tasks_exchange, [("shared", b"1", "a"), ("shared", b"2", "b")])
    consumer = broker.open_consumer(f"test {ns.settings.namespace}")
    got: list = []
    try:
        consumer.consume(ns.keys.shared_queue, 1, got.append)
        while not got:
            consumer.poll(0.05)
        assert (got[0].body, got[0].routing_key, got[0].redelivered) == (b"1", "shared", False)
        assert broker.queue_state(ns.keys.shared_queue).consumers == 1
        consumer.ack(got[0].tag)  # queued: the frame leaves with the next poll
        while len(got) < 2:  # prefetch 1: the second comes only once the first was acked
            consumer.poll(0.05)
        assert got[1].body == b"2"
    finally:
        consumer.close()  # the second, unacked, goes back
    assert eventual_depth(channel, ns.keys.shared_queue, 1) == 1

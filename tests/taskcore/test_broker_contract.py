"""The broker interface (taskcore.rabbitmq) as the system relies on it, checked on both brokers: the
real one against RabbitMQ, and the in-memory one that the fast unit tests use, so that what those
prove holds on RabbitMQ too. Everything goes through the interface; RabbitMQ's dead-lettering and
TTLs act after the call returns, hence `eventually`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pika
import pytest

from taskcore.keys import Keys
from taskcore.messages import Task, TaskSpec
from taskcore.rabbitmq import (
    Broker,
    BrokerError,
    BrokerUnavailable,
    Delivery,
    OutgoingMessage,
    PublishError,
    QueueNotFound,
    QueueSpec,
    Verdict,
)
from taskcore.rabbitmq.amqp import AmqpBroker
from taskcore.rabbitmq.memory import MemoryBroker
from taskcore.rabbitmq.memory_server import MemoryServer
from taskcore.rabbitmq.pika_consumer import connection_parameters
from taskcore.settings import Settings
from taskfaas.stack import RABBITMQ_URL, eventually
from tests.taskcore.conftest import CLOSED_PORT_AMQP, Namespace, make_settings


@dataclass
class Side:
    """One broker under test, and what a test needs around it that the interface does not offer."""

    kind: str
    settings: Settings
    make: Callable[[Settings], Broker]  # another client of the same broker, other settings
    down: Callable[[], Broker]  # a client of a broker that cannot be reached
    extra_queue: Callable[[QueueSpec], None]  # declares a queue outside the topology
    track: Callable[[str], None]  # a queue the cleanup must remove
    opened: list[Broker] = field(default_factory=list)

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.namespace)

    def broker(self, **overrides: Any) -> Broker:
        settings = make_settings(self.settings.namespace, **overrides) if overrides else self.settings
        broker = self.make(settings)
        self.opened.append(broker)
        for queue in broker.topology().queues:  # its retry delay queues depend on the settings
            self.track(queue.name)
        return broker


@pytest.fixture(params=["amqp", "memory"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    if request.param == "memory":
        server = MemoryServer()

        def unreachable() -> Broker:
            down = MemoryBroker(make_settings("down:"), MemoryServer())
            down.server.available = False
            return down

        yield Side("memory", make_settings("m:"), lambda s: MemoryBroker(s, server), unreachable,
                   server.declare_queue, lambda _queue: None)
        return
    ns: Namespace = request.getfixturevalue("ns")

    def extra_queue(spec: QueueSpec) -> None:
        ns.extra_queues.add(spec.name)
        with pika.BlockingConnection(connection_parameters(RABBITMQ_URL, 10)) as connection:
            connection.channel().queue_declare(spec.name, durable=True, arguments=spec.arguments)

    side = Side("amqp", ns.settings, AmqpBroker, lambda: AmqpBroker(ns.settings, url=CLOSED_PORT_AMQP),
                extra_queue, ns.extra_queues.add)
    yield side
    for broker in side.opened:
        broker.close()


def tasks(*ids: str) -> list[Task]:
    return [Task.from_spec(TaskSpec("primes", {"n": 7}, 1, task_id), 1) for task_id in ids]


def read_all(broker: Broker, queue: str) -> list[Delivery]:
    """Takes every ready message of `queue` off it (acked)."""
    got = []
    with broker.reader(queue) as reader:
        while (delivery := reader.get()) is not None:
            reader.ack(delivery.tag)
            got.append(delivery)
    return got


def test_publish_is_confirmed_routed_by_key_and_read_back_in_order(side: Side) -> None:
    broker, keys = side.broker(), side.keys
    side.track(side.keys.worker_queue("w1"))
    broker.declare(["w1"])
    broker.publish_tasks([("shared", t) for t in tasks("a", "b")] + [("w.w1", tasks("c")[0])])
    assert broker.depths([keys.shared_queue, keys.worker_queue("w1"), keys.results_queue]) == {
        keys.shared_queue: 2, keys.worker_queue("w1"): 1, keys.results_queue: 0}
    got = read_all(broker, keys.shared_queue)
    assert [(d.message_id, Task.from_json(d.body).task_id, d.routing_key, d.redelivered) for d in got] == [
        ("a", "a", "shared", False), ("b", "b", "shared", False)]
    assert broker.queue_state(keys.shared_queue).messages == 0


def test_unroutable_messages_are_reported_and_the_others_delivered(side: Side) -> None:
    broker, keys = side.broker(), side.keys
    broker.declare()
    messages = [OutgoingMessage("shared", b"{}", "a"), OutgoingMessage("w.nobody", b"{}", "b"),
                OutgoingMessage("shared", b"{}", "c")]
    with pytest.raises(PublishError) as caught:
        broker.publish(keys.tasks_exchange, messages)
    assert caught.value.unroutable == [1] and caught.value.only_unroutable
    assert broker.queue_state(keys.shared_queue).messages == 2


def test_nacked_messages_raise_and_the_broker_stays_usable(side: Side) -> None:
    # A full queue that rejects publishes makes the broker nack.
    broker, queue = side.broker(), f"{side.settings.namespace}full"
    side.extra_queue(QueueSpec(queue, {"x-max-length": 1, "x-overflow": "reject-publish"}))
    with pytest.raises(PublishError) as caught:
        broker.publish("", [(queue, b"1", "a"), (queue, b"2", "b"), (queue, b"3", "c")])
    assert caught.value.nacked == [1, 2] and not caught.value.only_unroutable
    assert [d.body for d in read_all(broker, queue)] == [b"1"]
    broker.publish("", [(queue, b"4", "d")])
    assert broker.queue_state(queue).messages == 1


def test_an_unknown_exchange_fails_the_publish_and_the_broker_recovers(side: Side) -> None:
    broker = side.broker()
    with pytest.raises(PublishError) as caught:
        broker.publish(f"{side.settings.namespace}no-such-exchange", [("x", b"{}", "a")])
    assert caught.value.unconfirmed == [0]
    broker.declare()
    broker.publish(side.keys.tasks_exchange, [("shared", b"{}", "b")])
    assert broker.queue_state(side.keys.shared_queue).messages == 1


def test_an_unreachable_broker_raises_the_projects_errors(side: Side) -> None:
    broker = side.down()
    with pytest.raises(PublishError) as caught:
        broker.publish("x", [("shared", b"{}", "a"), ("shared", b"{}", "b")])
    assert caught.value.unconfirmed == [0, 1]
    with pytest.raises(BrokerUnavailable):
        broker.queue_state("x")
    with pytest.raises(BrokerUnavailable):
        broker.depths(["x"])
    broker.close()


def test_a_missing_queue_is_queue_not_found(side: Side) -> None:
    broker, missing = side.broker(), f"{side.settings.namespace}missing"
    with pytest.raises(QueueNotFound):
        broker.queue_state(missing)
    with broker.reader(missing) as reader, pytest.raises(QueueNotFound):
        reader.get()
    assert broker.depths([missing]) == {missing: None}
    assert broker.delete_if_idle(missing) and not broker.unbind_worker_queue("nobody")
    broker.declare()  # and the broker is still usable
    assert broker.queue_state(side.keys.shared_queue).messages == 0


def test_what_a_reader_holds_unacked_goes_back_when_it_closes(side: Side) -> None:
    broker, keys = side.broker(), side.keys
    broker.declare()
    broker.publish(keys.tasks_exchange, [("shared", b"1", "a"), ("shared", b"2", "b")])
    with broker.reader(keys.shared_queue) as reader:
        first, second = reader.get(), reader.get()
        assert first is not None and second is not None and reader.get() is None
        reader.ack(first.tag)
    [back] = eventually(lambda: read_all(broker, keys.shared_queue) or None, 5, "the unacked one back")
    assert (back.body, back.redelivered) == (b"2", True)


def test_rejected_messages_are_dead_lettered_with_the_reason(side: Side) -> None:
    broker, keys = side.broker(), side.keys
    broker.declare()
    broker.publish(keys.tasks_exchange, [("shared", b"garbage", "a")])
    broker.publish(keys.results_exchange, [("results", b"garbage", "b")])
    for queue in (keys.shared_queue, keys.results_queue):
        with broker.reader(queue) as reader:
            delivery = reader.get()
            assert delivery is not None
            reader.reject(delivery.tag, requeue=False)
    for queue, dead in ((keys.shared_queue, keys.tasks_dead_queue),
                        (keys.results_queue, keys.results_dead_queue)):
        [message] = eventually(lambda d=dead: read_all(broker, d) or None, 5, f"a message in {dead}")
        [death] = message.headers["x-death"]
        assert (message.body, death["reason"], death["queue"]) == (b"garbage", "rejected", queue)


def test_a_poison_message_is_dead_lettered_after_the_delivery_limit(side: Side) -> None:
    broker, keys = side.broker(delivery_limit=2), side.keys
    broker.declare()
    broker.publish(keys.tasks_exchange, [("shared", b"poison", "p")])
    deliveries = 0

    def returned_or_dead() -> bool:
        nonlocal deliveries
        with broker.reader(keys.shared_queue) as reader:
            delivery = reader.get()  # a requeued message takes a moment to be ready again
            if delivery is not None:
                deliveries += 1
                reader.reject(delivery.tag, requeue=True)
        return broker.queue_state(keys.tasks_dead_queue).messages == 1

    eventually(returned_or_dead, 10, "the poison message in tasks.dead")
    assert deliveries == 3
    [death] = read_all(broker, keys.tasks_dead_queue)[0].headers["x-death"]
    assert death["reason"] == "delivery_limit"


def test_a_retry_waits_out_its_delay_queue_then_comes_back_on_the_shared_queue(side: Side) -> None:
    broker, keys = side.broker(task_unit_seconds=0.0), side.keys  # delays of 100 and 200 ms
    broker.declare()
    assert {q.name for q in broker.topology().queues} >= {keys.retry_queue(100), keys.retry_queue(200)}
    broker.publish("", [(keys.retry_queue(100), b"again", "r")])
    assert broker.queue_state(keys.shared_queue).messages == 0  # not before its delay
    [back] = eventually(lambda: read_all(broker, keys.shared_queue) or None, 5, "the retry on tasks.shared")
    [death] = back.headers["x-death"]
    assert (back.body, back.routing_key, death["reason"]) == (b"again", "shared", "expired")
    assert broker.queue_state(keys.retry_queue(100)).messages == 0


def test_a_worker_queue_is_unbound_then_deleted_only_when_idle(side: Side) -> None:
    broker, keys = side.broker(), side.keys
    side.track(side.keys.worker_queue("w1"))
    broker.declare(["w1"])
    queue = keys.worker_queue("w1")
    broker.publish(keys.tasks_exchange, [("w.w1", b"1", "a")])
    consumer = broker.open_consumer("holder")
    held: list[Delivery] = []
    try:
        consumer.consume(queue, 1, held.append)
        eventually(lambda: consumer.poll(0.05) or held, 5, "the held delivery")
        assert broker.queue_state(queue).consumers == 1
        assert broker.unbind_worker_queue("w1")
        with pytest.raises(PublishError) as caught:  # unbound: nothing new lands in it
            broker.publish(keys.tasks_exchange, [("w.w1", b"2", "b")])
        assert caught.value.only_unroutable
        assert not broker.delete_if_idle(queue)  # a consumer holds a message of it
    finally:
        consumer.close()  # its unacked message goes back
    eventually(lambda: broker.queue_state(queue).messages == 1, 5, "the held message back")
    assert not broker.delete_if_idle(queue)  # a message is ready in it
    read_all(broker, queue)
    assert broker.delete_if_idle(queue)
    with pytest.raises(QueueNotFound):
        broker.queue_state(queue)


def test_a_consumer_gets_within_its_prefetch_runs_callbacks_and_publishes_with_verdicts(side: Side) -> None:
    broker, keys = side.broker(), side.keys
    side.track(side.keys.worker_queue("w1"))
    broker.declare()
    broker.publish(keys.tasks_exchange, [("shared", b"1", "a"), ("shared", b"2", "b")])
    consumer = broker.open_consumer("worker test")
    got: list[Delivery] = []
    ran: list[str] = []
    try:
        consumer.declare(["w1"])
        consumer.consume(keys.shared_queue, 1, got.append)
        eventually(lambda: consumer.poll(0.05) or got, 5, "a delivery")
        consumer.poll(0.1)
        assert [d.body for d in got] == [b"1"]  # prefetch 1: the second waits for the ack
        threading.Thread(target=consumer.call_soon_threadsafe, args=(lambda: ran.append("soon"),)).start()
        consumer.call_later(0.05, lambda: ran.append("later"))
        consumer.ack(got[0].tag)
        eventually(lambda: consumer.poll(0.05) or (len(got) == 2 and len(ran) == 2), 5,
                   "the second delivery and both calls")
        assert sorted(ran) == ["later", "soon"] and got[1].body == b"2"
        verdicts = consumer.publish([(keys.results_exchange, OutgoingMessage("results", b"r", "a")),
                                     (keys.tasks_exchange, OutgoingMessage("w.nobody", b"t", "b")),
                                     ("", OutgoingMessage(keys.retry_queue(1000), b"t", "c"))])
        assert verdicts == [Verdict.OK, Verdict.UNROUTABLE, Verdict.OK]
        # A queue deleted under the worker: unroutable once, there again after the redeclare that
        # a refusal brings on before the next publish.
        to_w1 = [(keys.tasks_exchange, OutgoingMessage("w.w1", b"x"))]
        assert consumer.publish(to_w1) == [Verdict.OK]
        broker.delete_queue(keys.worker_queue("w1"))
        assert consumer.publish(to_w1) == [Verdict.UNROUTABLE]
        assert consumer.publish(to_w1) == [Verdict.OK]
        assert [d.body for d in read_all(broker, keys.worker_queue("w1"))] == [b"x"]
    finally:
        consumer.close()
    eventually(lambda: broker.queue_state(keys.shared_queue).messages == 1, 5, "the unacked one back")
    assert broker.queue_state(keys.results_queue).messages == 1
    assert broker.queue_state(keys.retry_queue(1000)).messages == 1


def test_a_closed_connection_is_broker_unavailable_to_its_consumer(side: Side) -> None:
    broker = side.broker()
    broker.declare()
    consumer = broker.open_consumer("closing")
    consumer.close()
    with pytest.raises(BrokerError):
        consumer.poll(0.01)
    consumer.call_soon_threadsafe(lambda: None)  # does nothing, raises nothing
    consumer.close()  # twice is fine


def test_a_consumer_steals_from_another_workers_queue_without_harm_to_what_it_holds(side: Side) -> None:
    """Consumer.steal, as a worker with an idle slot uses it (docs/worker_fleet.md, "Work stealing"):
    one message at a time off another worker's queue, settled by its tag like a consumed one; a
    missing queue is QueueNotFound and leaves the consumer's own deliveries unharmed; what it holds
    unacked when its connection closes goes back to the queue it was stolen from."""
    broker, keys = side.broker(), side.keys
    for worker in ("thief", "victim"):
        side.track(keys.worker_queue(worker))
    broker.declare(["thief", "victim"])
    broker.publish(keys.tasks_exchange, [("w.thief", b"own", "o"), ("w.victim", b"v1", "a"),
                                         ("w.victim", b"v2", "b"), ("w.victim", b"v3", "c")])
    consumer = broker.open_consumer("worker thief")
    own: list[Delivery] = []
    try:
        consumer.consume(keys.worker_queue("thief"), 1, own.append)
        eventually(lambda: consumer.poll(0.05) or own, 5, "the thief's own delivery")
        first = consumer.steal(keys.worker_queue("victim"), 5)
        second = consumer.steal(keys.worker_queue("victim"), 5)
        assert first is not None and second is not None
        assert (first.body, first.message_id, second.body) == (b"v1", "a", b"v2")
        assert len({own[0].tag, first.tag, second.tag}) == 3  # one tag space for the worker's jobs
        with pytest.raises(QueueNotFound):
            consumer.steal(keys.worker_queue("reaped"), 5)
        consumer.ack(first.tag)
        consumer.reject(second.tag, requeue=True)
        consumer.ack(own[0].tag)  # the 404 closed no channel the consumer holds deliveries on
        consumer.poll(0.1)
        third = consumer.steal(keys.worker_queue("victim"), 5)
        assert third is not None and third.body in (b"v2", b"v3")
    finally:
        consumer.close()
    # v1 acked; v2 requeued; the one still held when the connection closed went back to the victim.
    eventually(lambda: broker.queue_state(keys.worker_queue("victim")).messages == 2, 5,
               "the stolen, unacked message back in its queue")
    assert sorted(d.body for d in read_all(broker, keys.worker_queue("victim"))) == [b"v2", b"v3"]
    assert broker.queue_state(keys.worker_queue("thief")).messages == 0
    with broker.reader(keys.worker_queue("victim")) as reader:
        assert reader.get() is None
    empty = broker.open_consumer("worker thief")
    try:
        assert empty.steal(keys.worker_queue("victim"), 5) is None
    finally:
        empty.close()

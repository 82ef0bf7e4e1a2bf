"""The Broker and Consumer in memory, as Dramatiq's StubBroker: unit tests run dispatch, the janitor
and the worker against it in milliseconds, with no RabbitMQ.

Faithful where the system's logic relies on RabbitMQ (tests/taskcore/test_broker_contract.py runs
the same checks on both): direct exchanges and the default one route by routing key; a mandatory
publish nobody is bound for is unroutable; a full queue (x-max-length with reject-publish) nacks;
deliveries respect each consumer's prefetch; what a channel got and did not ack goes back to its
queue when it closes (or its connection drops), counted as a delivery; a quorum queue's message
returned more than x-delivery-limit times, or rejected without requeue, is dead-lettered (with an
x-death header) through x-dead-letter-exchange / -routing-key; a message past its queue's
x-message-ttl is dead-lettered likewise (the retry delay queues); a passive declare of a missing
queue is QueueNotFound. Not modelled: persistence, other exchange types, per-message TTL, flow
control. A MemoryServer is one broker, shared by every MemoryBroker and Consumer made on it;
`available = False` makes it unreachable, `drop_connections()` closes connections under their users.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

from taskcore.rabbitmq.interface import (
    Broker,
    BrokerError,
    BrokerUnavailable,
    Consumer,
    Delivery,
    OutgoingMessage,
    PublishError,
    QueueReader,
    QueueState,
    Verdict,
)
from taskcore.rabbitmq.memory_server import MemoryServer, ServerChannel
from taskcore.settings import Settings


class MemoryBroker(Broker):
    """A client of a MemoryServer (a new one of its own unless given), as AmqpBroker is of RabbitMQ."""

    def __init__(self, settings: Settings, server: MemoryServer | None = None) -> None:
        super().__init__(settings)
        self.server = server if server is not None else MemoryServer()

    def declare(self, worker_ids: Iterable[str] = ()) -> None:
        topology = self.topology(worker_ids)
        for exchange in topology.exchanges:
            self.server.declare_exchange(exchange)
        for queue in topology.queues:
            self.server.declare_queue(queue)

    def publish(self, exchange: str, messages: Sequence[OutgoingMessage],
                deadline: float | None = None) -> None:
        # In memory a publish never waits: a confirm that will never come is known at once, as if
        # the deadline had passed.
        verdicts: list[Verdict | None] = []
        for message in messages:
            try:
                verdicts.append(self.server.publish(exchange, OutgoingMessage(*message)))
            except BrokerError as error:
                raise PublishError(f"broker unavailable: {error!r}",
                                   unconfirmed=range(len(verdicts), len(messages))) from error
        unconfirmed = [i for i, verdict in enumerate(verdicts) if verdict is None]
        nacked = [i for i, verdict in enumerate(verdicts) if verdict is Verdict.NACK]
        unroutable = [i for i, verdict in enumerate(verdicts) if verdict is Verdict.UNROUTABLE]
        if unconfirmed or nacked or unroutable:
            raise PublishError(
                f"broker did not confirm {len(unconfirmed)}, refused {len(nacked)} and could not route "
                f"{len(unroutable)} message(s)",
                unconfirmed=unconfirmed, nacked=nacked, unroutable=unroutable)

    def queue_state(self, queue: str) -> QueueState:
        return self.server.queue_state(queue)

    def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        self.server.unbind(queue, exchange, routing_key)

    def delete_queue(self, queue: str) -> None:
        self.server.delete_queue(queue)

    @contextlib.contextmanager
    def reader(self, queue: str) -> Iterator[QueueReader]:
        channel = self.server.connect(f"reader {queue}")
        try:
            yield _MemoryReader(self.server, channel, queue)
        finally:
            self.server.close(channel)

    def open_consumer(self, name: str) -> Consumer:
        return MemoryConsumer(self, name)

    def close(self) -> None:
        """Nothing to close: each reader and consumer has its own channel."""


class _MemoryReader(QueueReader):
    def __init__(self, server: MemoryServer, channel: ServerChannel, queue: str) -> None:
        self._server, self._channel, self._queue = server, channel, queue

    def get(self) -> Delivery | None:
        return self._server.get(self._channel, self._queue)

    def ack(self, tag: int, multiple: bool = False) -> None:
        self._server.settle(self._channel, tag, ack=True, multiple=multiple)

    def reject(self, tag: int, requeue: bool) -> None:
        self._server.settle(self._channel, tag, ack=False, requeue=requeue)


class MemoryConsumer(Consumer):
    broker: MemoryBroker

    def __init__(self, broker: MemoryBroker, name: str) -> None:
        super().__init__(broker)
        self.name = name
        self._server = broker.server
        self._channel = self._server.connect(name)

    def _declare(self, worker_ids: Sequence[str]) -> None:
        self.broker.declare(worker_ids)

    def consume(self, queue: str, prefetch: int, on_delivery: Callable[[Delivery], None]) -> None:
        self._server.subscribe(self._channel, queue, prefetch, on_delivery)

    def cancel(self) -> None:
        self._server.cancel(self._channel)

    def poll(self, seconds: float) -> None:
        for callback in self._server.wait(self._channel, seconds):
            callback()

    def steal(self, queue: str, timeout: float) -> Delivery | None:
        return self._server.get(self._channel, queue)  # a missing queue closes no channel here

    def ack(self, tag: int) -> None:
        self._server.settle(self._channel, tag, ack=True)

    def reject(self, tag: int, requeue: bool) -> None:
        self._server.settle(self._channel, tag, ack=False, requeue=requeue)

    def _publish(self, exchange: str, messages: Sequence[OutgoingMessage]) -> list[Verdict]:
        self._server.ensure_open(self._channel)
        try:
            # A confirm that never comes counts as refused, as AmqpConsumer reports it.
            return [self._server.publish(exchange, message) or Verdict.NACK for message in messages]
        except BrokerError as error:  # the channel is closed by the broker, as RabbitMQ does
            self._server.close(self._channel)
            raise BrokerUnavailable(f"broker unavailable: {error}") from error

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self._server.call_soon(self._channel, callback)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        self._server.ensure_open(self._channel)
        self._server.call_soon(self._channel, callback, seconds)

    def close(self) -> None:
        self._server.close(self._channel)

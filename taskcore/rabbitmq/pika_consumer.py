"""The worker's Consumer on RabbitMQ, through pika: the only module of taskcore and the worker fleet
that imports pika (localfaas has its own, being a separate layer). The functions' side (AmqpBroker:
publishing, declarations, the janitor's reads) is amqp.py's, on py-amqp, which costs about a third
of pika's CPU per confirmed publish (docs/taskcore.md, Broker); the consumer stays on pika, whose
event loop runs its deliveries, acks, timers and cross-thread callbacks (see AmqpConsumer). Every pika
exception is turned into the project's own here (BrokerUnavailable, QueueNotFound).

Batched confirms: pika's BlockingChannel in confirm mode waits for each publish's confirm, which caps
a channel at about one round trip per message. ConfirmingChannel instead puts the channel in confirm
mode itself and publishes a whole batch on the underlying channel, then waits once until every
delivery tag is acked or nacked (~5,700 msg/s vs ~440 with per-message confirms into a quorum
queue). No public API of pika 1.x does that, so it uses three of its internals, each marked where
used: `BlockingChannel._impl` (the asynchronous channel beneath), `BlockingChannel._flush_output`
(wait until a condition holds, processing I/O) and `_IoloopTimerContext` (a deadline for that
wait). The worker's acks use `_impl` too (no blocking flush per ack). pika is pinned below 2.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel, _IoloopTimerContext

from taskcore.rabbitmq.interface import (
    Broker,
    BrokerError,
    BrokerUnavailable,
    Consumer,
    Delivery,
    OutgoingMessage,
    QueueNotFound,
    Verdict,
)
from taskcore.rabbitmq.topology import Topology

NOT_FOUND = 404
# What a lost or refused connection or channel raises (socket errors surface as OSError in places).
PIKA_ERRORS = (pika.exceptions.AMQPError, OSError)


def connection_parameters(url: str, timeout: float) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    # A broker under a memory/disk alarm blocks publishers; fail instead of hanging the caller.
    params.blocked_connection_timeout = timeout
    return params


@contextlib.contextmanager
def translated(queue: str | None = None) -> Iterator[None]:
    """pika's exceptions as the project's: a 404 on `queue` is QueueNotFound, another refusal of
    the broker on a channel a BrokerError, anything else BrokerUnavailable."""
    try:
        yield
    except pika.exceptions.ChannelClosedByBroker as error:
        if queue is not None and error.reply_code == NOT_FOUND:
            raise QueueNotFound(queue) from error
        raise BrokerError(f"the broker closed the channel: {error.reply_code} {error.reply_text}") from error
    except PIKA_ERRORS as error:
        raise BrokerUnavailable(f"broker unavailable: {error!r}") from error


def declare_on(channel: BlockingChannel, topology: Topology) -> None:
    """Declares a topology (idempotent) on a pika channel."""
    for exchange in topology.exchanges:
        channel.exchange_declare(exchange, "direct", durable=True)
    for queue in topology.queues:
        channel.queue_declare(queue.name, durable=True, arguments=queue.arguments or None)
        for exchange, routing_key in queue.bindings:
            channel.queue_bind(queue.name, exchange, routing_key)


class ConfirmingChannel:
    """A channel in confirm mode that publishes a batch and then waits once for all confirms."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.connection = connection
        self.channel = connection.channel()
        self._next_tag = 1
        self._pending: dict[int, int] = {}  # delivery tag -> index in the batch
        self._outcome: list[Verdict | None] = []
        self._returned: set[str | None] = set()
        selected: list[bool] = []
        # pika internal: BlockingChannel.confirm_delivery would make every publish wait for its own
        # confirm; the impl channel's takes callbacks, so confirms are only collected.
        impl = self.channel._impl
        impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                              callback=lambda _frame: selected.append(True))
        impl.add_on_return_callback(self._on_return)
        # pika internal: waits (processing I/O) for Confirm.SelectOk, as the public calls do inside.
        self.channel._flush_output(lambda: bool(selected))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        verdict = Verdict.OK if isinstance(method, pika.spec.Basic.Ack) else Verdict.NACK
        tags = [t for t in self._pending if t <= method.delivery_tag] if method.multiple \
            else [method.delivery_tag]
        for tag in tags:
            index = self._pending.pop(tag, None)
            if index is not None:
                self._outcome[index] = verdict

    def _on_return(self, _channel: Any, _method: Any, properties: pika.BasicProperties, _body: bytes) -> None:
        # The broker sends basic.return before the ack of the same message.
        self._returned.add(properties.message_id)

    def publish(self, exchange: str, messages: Sequence[OutgoingMessage], todo: Iterable[int],
                outcome: list[Verdict | None], timeout: float) -> None:
        """Publishes messages[i] for i in todo; fills outcome[i] with a Verdict. Raises pika's
        AMQPConnectionError when not every confirm came within `timeout`."""
        todo = list(todo)
        self._outcome, self._returned, self._pending = outcome, set(), {}
        impl = self.channel._impl  # pika internal: publishes without waiting (see the module doc)
        for index in todo:
            routing_key, body, message_id = messages[index]
            properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                              content_type="application/json", message_id=message_id)
            impl.basic_publish(exchange, routing_key, body, properties, mandatory=True)
            self._pending[self._next_tag] = index
            self._next_tag += 1
        # pika internals: one wait for every confirm of the batch, bounded by a timer on the ioloop.
        with _IoloopTimerContext(timeout, self.connection._impl) as timer:
            self.channel._flush_output(lambda: not self._pending, timer.is_ready)
        if self._pending:
            raise pika.exceptions.AMQPConnectionError(f"no confirm within {timeout} s")
        for index in todo:
            if outcome[index] is Verdict.OK and messages[index].message_id in self._returned:
                outcome[index] = Verdict.UNROUTABLE


class AmqpConsumer(Consumer):
    """A worker's connection: one channel consuming (and declaring), one publishing with batched
    confirms, so that results and retries confirm in one round trip per pass of the event loop."""

    def __init__(self, broker: Broker, url: str, name: str) -> None:
        super().__init__(broker)
        params = connection_parameters(url, self.settings.broker_timeout)
        # Shown by rabbitmqctl/the management UI; the namespace tells apart stacks sharing a broker.
        params.client_properties = {"connection_name": name}
        self._consumer_tags: list[str] = []
        # Stolen deliveries, by the (negative, so distinct from the consuming channel's) tag the worker
        # knows them by: the channel each came on, which holds nothing else, and its tag there.
        self._stolen: dict[int, tuple[BlockingChannel, int]] = {}
        self._stolen_keys = itertools.count(-1, -1)
        self._spare: BlockingChannel | None = None  # a steal channel that found its queue empty
        with translated():
            self._connection = pika.BlockingConnection(params)
            try:
                self._channel = self._connection.channel()
                self._confirming = ConfirmingChannel(self._connection)
            except BaseException:
                self.close()
                raise

    def _declare(self, worker_ids: Sequence[str]) -> None:
        with translated():
            declare_on(self._channel, self.broker.topology(worker_ids))

    def consume(self, queue: str, prefetch: int, on_delivery: Callable[[Delivery], None]) -> None:
        def deliver(_channel: BlockingChannel, method: pika.spec.Basic.Deliver,
                    properties: pika.BasicProperties, body: bytes) -> None:
            on_delivery(Delivery(method.delivery_tag, body, method.routing_key, method.exchange,
                                 method.redelivered, properties.message_id, properties.headers or {}))

        with translated():
            # Per consumer: quorum queues do not support a channel-wide prefetch.
            self._channel.basic_qos(prefetch_count=prefetch)
            self._consumer_tags.append(self._channel.basic_consume(queue, deliver))

    def cancel(self) -> None:
        with translated():
            for tag in self._consumer_tags:
                self._channel.basic_cancel(tag)
        self._consumer_tags = []

    def poll(self, seconds: float) -> None:
        self._ensure_open()
        with translated():
            self._connection.process_data_events(time_limit=seconds)

    def _ensure_open(self) -> None:
        # pika fails in its own ways (a ValueError from its ioloop) on a connection closed on our side.
        if not self._connection.is_open:
            raise BrokerUnavailable("broker unavailable: the connection is closed")

    def steal(self, queue: str, timeout: float) -> Delivery | None:
        channel, self._spare = self._spare, None
        got: list[tuple[Any, pika.BasicProperties, bytes]] = []
        with translated(queue):
            channel = channel or self._connection.channel()
            # pika internals: BlockingChannel.basic_get cannot be given a timeout, and a quorum queue
            # without a leader never answers; so the impl channel's get, and a bounded wait for it
            # or for the GetEmpty that BlockingChannel records (reset when the block ends).
            impl, empty = channel._impl, channel._basic_getempty_result
            with empty, _IoloopTimerContext(timeout, self._connection._impl) as timer:
                impl.basic_get(queue, lambda _channel, method, properties, body: got.append(
                    (method, properties, body)), auto_ack=False)
                channel._flush_output(lambda: bool(got), empty.is_ready, timer.is_ready)
                was_empty = empty.is_ready()
        if not got:
            if was_empty:
                self._spare = channel
            else:  # no answer: a message that comes later goes back to its queue when this closes
                with contextlib.suppress(*PIKA_ERRORS):
                    impl.close()
            return None
        method, properties, body = got[0]
        key = next(self._stolen_keys)
        self._stolen[key] = (channel, method.delivery_tag)
        return Delivery(key, body, method.routing_key, method.exchange, method.redelivered,
                        properties.message_id, properties.headers or {})

    def _settle_stolen(self, key: int, ack: bool, requeue: bool) -> None:
        channel, tag = self._stolen.pop(key)
        with translated():
            if ack:
                channel.basic_ack(tag)
            else:
                channel.basic_reject(tag, requeue=requeue)
            if self._spare is None:
                self._spare = channel
            else:
                channel.close()

    def ack(self, tag: int) -> None:
        if tag < 0:
            self._settle_stolen(tag, ack=True, requeue=False)
            return
        # pika internal: the impl channel's basic_ack only queues the frame, which goes out with the
        # next poll, a moment later; BlockingChannel.basic_ack flushes it at once, a blocking write
        # per ack that cost a fifth of a worker's CPU at high rates. (try, not `translated`: an ack
        # per task is the hot path.)
        try:
            self._channel._impl.basic_ack(tag)
        except PIKA_ERRORS as error:
            raise BrokerUnavailable(f"broker unavailable: {error!r}") from error

    def reject(self, tag: int, requeue: bool) -> None:
        if tag < 0:
            self._settle_stolen(tag, ack=False, requeue=requeue)
            return
        with translated():
            self._channel.basic_reject(tag, requeue=requeue)

    def _publish(self, exchange: str, messages: Sequence[OutgoingMessage]) -> list[Verdict]:
        outcome: list[Verdict | None] = [None] * len(messages)
        with translated():
            self._confirming.publish(exchange, messages, range(len(messages)), outcome,
                                     self.settings.broker_timeout)
        return [verdict or Verdict.NACK for verdict in outcome]

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        # A connection that is gone raises here: its deliveries are the broker's again.
        with contextlib.suppress(*PIKA_ERRORS):
            self._connection.add_callback_threadsafe(callback)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        self._ensure_open()
        with translated():
            self._connection.call_later(seconds, callback)

    def close(self) -> None:
        connection = getattr(self, "_connection", None)
        if connection is not None and connection.is_open:
            with contextlib.suppress(*PIKA_ERRORS):
                connection.close()

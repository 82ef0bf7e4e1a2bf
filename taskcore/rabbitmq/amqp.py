"""AmqpBroker: the functions' side of RabbitMQ (publishing with confirms, the topology, the janitor's
queue operations), through py-amqp (`amqp`, Celery's client): the only module that imports it. The
worker's Consumer is pika_consumer.py's, on pika. Every py-amqp exception is turned into the
project's own here (BrokerUnavailable, QueueNotFound, PublishError).

Why py-amqp here: a function publishes a few messages per invocation and waits for their confirms,
and the CPU of that wait is the library's Python. Measured in one process (/work/prof/parts.py,
`publish_tasks` of one task): ~0.3 ms per confirmed publish here where pika's BlockingConnection, driven
through its internals as the consumer still is, took ~1 ms (docs/taskcore.md, Broker). py-amqp is a
plain blocking client: a publish is one write, and a wait reads frames off the socket and runs the
channel's listeners, with no ioloop, timers or callback queues in between.

Batched confirms with its public API: the channel is put in confirm mode once, every message of a
batch is published (delivery tags count from 1 per channel), then the connection's frames are read
until every tag was acked or nacked (`multiple` covers every tag up to it) or the broker timeout
passes. A mandatory message that no queue takes comes back as basic.return before its ack, and is
reported UNROUTABLE.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

import amqp
import amqp.exceptions
from amqp.method_framing import frame_writer

from taskcore.rabbitmq.interface import (
    Broker,
    BrokerError,
    BrokerUnavailable,
    Consumer,
    Delivery,
    OutgoingMessage,
    PublishError,
    QueueNotFound,
    QueueReader,
    QueueState,
    Verdict,
)
from taskcore.rabbitmq.topology import Topology
from taskcore.settings import Settings

if TYPE_CHECKING:
    from amqp.basic_message import Message

NOT_FOUND = 404
PERSISTENT = 2
# Proposed to the broker, which takes the lower of its own and ours (RabbitMQ's default is 60 s);
# `?heartbeat=` in the URL overrides it, as for pika and localfaas.mq.
HEARTBEAT_SECONDS = 60
# What a lost or refused connection or channel raises: py-amqp's errors, and the socket's own
# (OSError, timeouts included), which it lets through.
AMQP_ERRORS = (amqp.exceptions.AMQPError, OSError)


def connect(url: str, timeout: float) -> amqp.Connection:
    """An open connection to `url` (amqp://user:password@host:port/vhost?heartbeat=s). Every read
    and write of it gives up after `timeout`: a broker that stops answering (or blocks publishers
    under a memory alarm) fails the caller instead of hanging it."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    heartbeat = int(float(parse_qs(parts.query).get("heartbeat", [HEARTBEAT_SECONDS])[0]))
    connection = amqp.Connection(
        host=f"{host}:{port}", userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) if len(parts.path) > 1 else "/",
        ssl=parts.scheme == "amqps", heartbeat=heartbeat,
        connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)
    # Not negotiated: with it, py-amqp reads the socket (a non-blocking drain) before every publish
    # to learn of a block; a blocked connection shows as confirms that do not come within the timeout.
    connection.negotiate_capabilities = {**connection.negotiate_capabilities, "connection.blocked": False}
    connection.connect()
    return connection


@contextlib.contextmanager
def translated(queue: str | None = None) -> Iterator[None]:
    """py-amqp's exceptions as the project's: a 404 on `queue` is QueueNotFound, another refusal of
    the broker on a channel a BrokerError, anything else BrokerUnavailable."""
    try:
        yield
    except amqp.exceptions.ChannelError as error:
        if queue is not None and error.reply_code == NOT_FOUND:
            raise QueueNotFound(queue) from error
        raise BrokerError(f"the broker closed the channel: {error.reply_code} {error.reply_text}") from error
    except AMQP_ERRORS as error:
        raise BrokerUnavailable(f"broker unavailable: {error!r}") from error


def declare_on(channel: amqp.Channel, topology: Topology) -> None:
    """Declares a topology (idempotent) on a channel."""
    for exchange in topology.exchanges:
        channel.exchange_declare(exchange, "direct", durable=True, auto_delete=False)
    for queue in topology.queues:
        channel.queue_declare(queue.name, durable=True, auto_delete=False, arguments=queue.arguments or None)
        for exchange, routing_key in queue.bindings:
            channel.queue_bind(queue.name, exchange, routing_key)


def open_channel(connection: amqp.Connection) -> amqp.Channel:
    # auto_decode off: bodies stay the bytes that were published, whatever content_encoding says.
    channel = amqp.Channel(connection, auto_decode=False)
    channel.open()
    return channel


class Frames:
    """Stands in for the transport of a frame writer: keeps what it is given, to go out in one write.
    (The writer hands over a view of a buffer it reuses: copied.)"""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self.chunks.append(bytes(data))

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


class Link:
    """One connection, with a channel in confirm mode for publishing and, made when first needed, a
    channel for declarations and inspection (a 404 closes a channel: py-amqp reopens it)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.connection = connect(url, timeout)
        try:
            self.confirms = open_channel(self.connection)
            # nowait: no Select-Ok to wait for; a refusal would close the channel, seen at the next wait.
            self.confirms.confirm_select(nowait=True)
        except BaseException:
            self.close()
            raise
        self.confirms.events["basic_ack"].add(self._on_ack)
        self.confirms.events["basic_nack"].add(self._on_nack)
        self.confirms.events["basic_return"].add(self._on_return)
        self._side: amqp.Channel | None = None
        # A batch's frames go out in one write: py-amqp writes each message at once, and every write
        # on loopback wakes the broker (a batch of 100 cost ~40% more CPU per message than pika's,
        # which buffers). Its own frame writer, over a Frames, set on the connection for the batch.
        self._frames = Frames()
        self._batch_writer = frame_writer(self.connection, self._frames)
        self._readable = select.poll()
        self._readable.register(self.connection.sock, select.POLLIN)
        self._next_tag = 1
        self._pending: dict[int, int] = {}  # delivery tag -> index in the batch
        self._outcome: list[Verdict | None] = []
        self._returned: set[str | None] = set()

    def usable(self) -> bool:
        """Reads whatever the broker sent while we were idle (heartbeats, or a close, which shows here
        before any message is written to a dead socket), sends a heartbeat if one is due; False if the
        connection is gone, or nothing came from the broker for two heartbeat intervals."""
        if not (self.connection.connected and self.confirms.is_open):
            return False
        try:
            while self._readable.poll(0):
                try:
                    self.connection.drain_events(timeout=0)
                except TimeoutError:  # a heartbeat frame: nothing else was there
                    break
            self.connection.heartbeat_tick()
        except AMQP_ERRORS:
            return False
        return self.confirms.is_open

    def side(self) -> amqp.Channel:
        if self._side is None or not self._side.is_open:
            self._side = open_channel(self.connection)
        return self._side

    def _settle(self, tag: int, multiple: bool, verdict: Verdict) -> None:
        tags = [t for t in self._pending if t <= tag] if multiple else [tag]
        for settled in tags:
            index = self._pending.pop(settled, None)
            if index is not None:
                self._outcome[index] = verdict

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, Verdict.OK)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, Verdict.NACK)

    def _on_return(self, _error: Exception, _exchange: str, _routing_key: str, message: Message) -> None:
        # The broker sends basic.return before the ack of the same message.
        self._returned.add(message.properties.get("message_id"))

    def publish(self, exchange: str, messages: Sequence[OutgoingMessage], todo: Iterable[int],
                outcome: list[Verdict | None], timeout: float) -> None:
        """Publishes messages[i] for i in todo; fills outcome[i] with a Verdict. Raises TimeoutError
        when not every confirm came within `timeout`."""
        todo = list(todo)
        self._outcome, self._returned, self._pending = outcome, set(), {}
        publish, connection = self.confirms.basic_publish, self.connection
        direct = connection.frame_writer
        if len(todo) > 1:
            connection.frame_writer = self._batch_writer
        try:
            for index in todo:
                routing_key, body, message_id = messages[index]
                message = amqp.Message(body, delivery_mode=PERSISTENT, content_type="application/json",
                                       message_id=message_id)
                publish(message, exchange=exchange, routing_key=routing_key, mandatory=True)
                self._pending[self._next_tag] = index
                self._next_tag += 1
        finally:
            connection.frame_writer = direct
            batch = self._frames.take()  # and nothing of a failed batch left for the next one
        if batch:
            connection.transport.write(batch)
        deadline = time.monotonic() + timeout
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no confirm within {timeout} s")
            self.connection.drain_events(timeout=remaining)
        for index in todo:
            if outcome[index] is Verdict.OK and messages[index].message_id in self._returned:
                outcome[index] = Verdict.UNROUTABLE

    def close(self) -> None:
        connection = self.connection
        with contextlib.suppress(*AMQP_ERRORS):
            if connection.connected:
                connection.close()
        connection.collect()  # the socket, whatever close managed

    def abandon(self) -> None:
        """Drops the socket without the closing handshake, which a broker that stopped answering
        would keep waiting for (the broker closes its side when the socket goes)."""
        self.connection.collect()


class AmqpBroker(Broker):
    """One connection, with a confirm-mode channel and a channel for declarations and inspection,
    per process, reused; reopened once, transparently, when found stale (an idle Lambda
    environment's connection may have been closed by the broker).

    A message that was sent but not confirmed before a connection loss is published again on the
    new connection, so delivery is at least once; consumers are idempotent (COMPLETE, MARK_RUNNING).
    Thread-safe by a lock: py-amqp connections are not.
    """

    def __init__(self, settings: Settings, url: str | None = None) -> None:
        super().__init__(settings)
        self.url = url or settings.rabbitmq_url
        self._link: Link | None = None
        self._lock = threading.RLock()

    def publish(self, exchange: str, messages: Sequence[OutgoingMessage],
                deadline: float | None = None) -> None:
        if not messages:
            return
        messages = [OutgoingMessage(*message) for message in messages]
        outcome: list[Verdict | None] = [None] * len(messages)
        with self._lock:
            for attempt in (1, 2):
                todo = [i for i, verdict in enumerate(outcome) if verdict is None]
                timeout = self.settings.broker_timeout
                if deadline is not None:
                    timeout = min(timeout, deadline - time.monotonic())
                try:
                    if timeout <= 0:
                        raise TimeoutError("the caller's deadline has passed")
                    self._open(timeout).publish(exchange, messages, todo, outcome, timeout)
                    break
                except (*AMQP_ERRORS, BrokerError) as error:
                    self._abandon()
                    if attempt == 2:
                        unconfirmed = [i for i, verdict in enumerate(outcome) if verdict is None]
                        raise PublishError(f"broker unavailable: {error!r}",
                                           unconfirmed=unconfirmed) from error
        nacked = [i for i, verdict in enumerate(outcome) if verdict is Verdict.NACK]
        unroutable = [i for i, verdict in enumerate(outcome) if verdict is Verdict.UNROUTABLE]
        if nacked or unroutable:
            raise PublishError(
                f"broker refused {len(nacked)} and could not route {len(unroutable)} message(s)",
                nacked=nacked, unroutable=unroutable)

    def declare(self, worker_ids: Iterable[str] = ()) -> None:
        with self._using() as link:
            declare_on(link.side(), self.topology(worker_ids))

    def queue_state(self, queue: str) -> QueueState:
        with self._using(queue) as link:
            _name, messages, consumers = link.side().queue_declare(queue, passive=True)
            return QueueState(messages, consumers)

    def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        with self._using() as link:
            link.side().queue_unbind(queue, exchange, routing_key)

    def delete_queue(self, queue: str) -> None:
        with self._using() as link:
            link.side().queue_delete(queue)

    @contextlib.contextmanager
    def reader(self, queue: str) -> Iterator[QueueReader]:
        with self._using() as link:
            channel = open_channel(link.connection)
        try:
            yield _AmqpReader(channel, queue, self._lock)
        finally:
            with self._lock, contextlib.suppress(*AMQP_ERRORS):
                channel.close()  # what it got and did not ack goes back to the queue

    def open_consumer(self, name: str) -> Consumer:
        # Imported here: the functions never consume, and pika stays out of their cold start.
        from taskcore.rabbitmq.pika_consumer import AmqpConsumer

        return AmqpConsumer(self, self.url, name)

    def close(self) -> None:
        with self._lock:
            link, self._link = self._link, None
            if link is not None:
                link.close()

    def _abandon(self) -> None:
        with self._lock:
            link, self._link = self._link, None
            if link is not None:
                link.abandon()

    @contextlib.contextmanager
    def _using(self, queue: str | None = None) -> Iterator[Link]:
        """The lock and the open link; errors translated, and a lost connection dropped, so that
        the next call opens another."""
        with self._lock:
            try:
                with translated(queue):
                    yield self._open()
            except BrokerUnavailable:
                self.close()
                raise

    def _open(self, timeout: float | None = None) -> Link:
        """The link, opened again if it is gone; a new connection's handshake and later reads wait
        `timeout` at most (BROKER_TIMEOUT by default)."""
        link = self._link
        if link is not None and link.usable():
            return link
        self.close()
        with translated():
            self._link = Link(self.url, timeout or self.settings.broker_timeout)
        return self._link


class _AmqpReader(QueueReader):
    def __init__(self, channel: amqp.Channel, queue: str, lock: threading.RLock) -> None:
        self._channel = channel
        self._queue = queue
        self._lock = lock

    def get(self) -> Delivery | None:
        with self._lock, translated(self._queue):
            message = self._channel.basic_get(self._queue, no_ack=False)
        if message is None:
            return None
        info, properties = message.delivery_info, message.properties
        return Delivery(info["delivery_tag"], message.body, info["routing_key"], info["exchange"],
                        info["redelivered"], properties.get("message_id"),
                        properties.get("application_headers") or {})

    def ack(self, tag: int, multiple: bool = False) -> None:
        with self._lock, translated():
            self._channel.basic_ack(tag, multiple=multiple)

    def reject(self, tag: int, requeue: bool) -> None:
        with self._lock, translated():
            self._channel.basic_reject(tag, requeue=requeue)

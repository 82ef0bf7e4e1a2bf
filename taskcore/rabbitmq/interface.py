"""What the system asks of its broker, without a client library: the Broker (publishing with confirms, the
topology, the janitor's queue operations), the worker's Consumer, and the project's own errors.

Two implementations: `amqp.AmqpBroker` (RabbitMQ through py-amqp, its consumers through pika:
`pika_consumer.AmqpConsumer`) and `memory.MemoryBroker` (in memory, for fast unit tests). As in
Dramatiq's broker.py, the logic that does not depend on the transport (routing a task to its queue,
"delete the queue if idle", depths, grouping a worker's publications by exchange, repairing the
topology after a refused publish) is written once here, on top of a few primitives each
implementation provides.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from taskcore.keys import RESULTS_DEAD_ROUTING_KEY, RESULTS_ROUTING_KEY, Keys, worker_routing_key
from taskcore.messages import Task, TaskResult
from taskcore.rabbitmq.topology import Topology, topology
from taskcore.settings import Settings

# Errors -------------------------------------------------------------------------------------------


class BrokerError(Exception):
    """Something the broker did or could not do; never one of py-amqp's or pika's own exceptions."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached, closed the connection or channel, or did not answer in time."""


class QueueNotFound(BrokerError):
    """The queue does not exist (a passive declare's 404)."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"no queue {queue!r}")
        self.queue = queue


class PublishError(BrokerError):
    """The broker did not confirm every message. Indices refer to the batch as given; messages not
    listed in any of them were confirmed."""

    def __init__(self, message: str, *, unconfirmed: Sequence[int] = (), nacked: Sequence[int] = (),
                 unroutable: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.unconfirmed = list(unconfirmed)
        self.nacked = list(nacked)
        self.unroutable = list(unroutable)

    @property
    def only_unroutable(self) -> bool:
        return bool(self.unroutable) and not self.unconfirmed and not self.nacked


# Messages -----------------------------------------------------------------------------------------


class Verdict(StrEnum):
    """What the broker said of one published message."""

    OK = "ok"  # confirmed (acked) and routed to at least one queue
    NACK = "nack"  # refused (a full queue rejecting publishes, an internal error)
    UNROUTABLE = "unroutable"  # confirmed, but no queue was bound to its routing key (returned)


class OutgoingMessage(NamedTuple):
    """A message to publish: persistent, JSON, mandatory (an unroutable one is reported)."""

    routing_key: str
    body: bytes
    message_id: str | None = None


@dataclass(frozen=True)
class Delivery:
    """A message received from a queue, by a consumer or a get; acked or rejected by its tag."""

    tag: int
    body: bytes
    routing_key: str = ""
    exchange: str = ""
    redelivered: bool = False
    message_id: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueState:
    messages: int  # ready, not counting those delivered and unacked
    consumers: int


# The Broker ---------------------------------------------------------------------------------------


class QueueReader(ABC):
    """Gets messages from one queue, one at a time, on a channel of its own: what it got and did not
    ack goes back to the queue when the reader closes."""

    @abstractmethod
    def get(self) -> Delivery | None:
        """The next ready message, or None when the queue is empty; raises QueueNotFound."""

    @abstractmethod
    def ack(self, tag: int, multiple: bool = False) -> None:
        """Acks the message `tag` (and, with multiple, every earlier one this reader holds)."""

    @abstractmethod
    def reject(self, tag: int, requeue: bool) -> None:
        """Back to the queue (requeue), or to the queue's dead-letter exchange."""


class Broker(ABC):
    """One client of the broker for one namespace: publishing with confirms, declarations, queue
    inspection; thread-safe. Opens its connection lazily and reopens it when found stale."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)

    # Primitives (each implementation's) -----------------------------------------------------------

    @abstractmethod
    def declare(self, worker_ids: Iterable[str] = ()) -> None:
        """Declares the namespace's topology (idempotent), with these workers' queues."""

    @abstractmethod
    def publish(self, exchange: str, messages: Sequence[OutgoingMessage],
                deadline: float | None = None) -> None:
        """Publishes persistent messages and waits for the broker's confirms; raises PublishError.
        `deadline` (time.monotonic()): the call returns or raises by then, whatever the broker does
        (without it, each wait is bounded by BROKER_TIMEOUT, and there may be a few)."""

    @abstractmethod
    def queue_state(self, queue: str) -> QueueState:
        """Messages ready and consumers of `queue` now (a passive declare); raises QueueNotFound."""

    @abstractmethod
    def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Removes a binding (nothing happens if it does not exist)."""

    @abstractmethod
    def delete_queue(self, queue: str) -> None:
        """Deletes a queue and the messages in it (nothing happens if it does not exist)."""

    @abstractmethod
    def reader(self, queue: str) -> contextlib.AbstractContextManager[QueueReader]:
        """A QueueReader on `queue`, closed (its unacked messages returned) when the block ends."""

    @abstractmethod
    def open_consumer(self, name: str) -> Consumer:
        """A connection of its own for a worker (`name` shows in the broker's connection list)."""

    @abstractmethod
    def close(self) -> None:
        """Closes the connection (a later call opens a new one)."""

    # Built on them --------------------------------------------------------------------------------

    def publish_tasks(self, messages: Sequence[tuple[str, Task]], deadline: float | None = None) -> None:
        """(routing_key, task) pairs to the tasks exchange; message_id = task_id. `deadline`: see
        publish."""
        self.publish(self.keys.tasks_exchange,
                     [OutgoingMessage(rk, task.to_json(), task.task_id) for rk, task in messages], deadline)

    def publish_results(self, results: Sequence[TaskResult]) -> None:
        self.publish(self.keys.results_exchange,
                     [OutgoingMessage(RESULTS_ROUTING_KEY, r.to_json(), r.task_id) for r in results])

    def dead_letter_results(self, messages: Sequence[tuple[bytes, str]]) -> None:
        """(body, message_id) pairs to results.dead, through the dead-letter exchange."""
        self.publish(self.keys.dead_exchange, [OutgoingMessage(RESULTS_DEAD_ROUTING_KEY, body, message_id)
                                               for body, message_id in messages])

    def unbind_worker_queue(self, worker_id: str) -> bool:
        """Unbinds a worker's queue from the tasks exchange, so that a publish for this worker is
        unroutable from now on; False if the queue does not exist."""
        queue = self.keys.worker_queue(worker_id)
        try:
            self.queue_state(queue)
        except QueueNotFound:
            return False
        self.unbind(queue, self.keys.tasks_exchange, worker_routing_key(worker_id))
        return True

    def delete_if_idle(self, queue: str) -> bool:
        """Deletes the queue unless a message is ready in it or a consumer is attached (a worker that
        is connected but stopped heart-beating may still hold unacked tasks, which a delete would
        drop); True if it is gone. Quorum queues refuse queue.delete with if-empty (RabbitMQ closes
        the connection), hence the look first: call it on an unbound queue, where nothing can arrive
        in between."""
        try:
            state = self.queue_state(queue)
        except QueueNotFound:
            return True
        if state.messages or state.consumers:
            return False
        self.delete_queue(queue)
        return True

    def depths(self, queues: Sequence[str]) -> dict[str, int | None]:
        """Messages ready per queue; None for a queue that does not exist."""
        depths: dict[str, int | None] = {}
        for queue in queues:
            try:
                depths[queue] = self.queue_state(queue).messages
            except QueueNotFound:
                depths[queue] = None
        return depths

    def topology(self, worker_ids: Iterable[str] = ()) -> Topology:
        return topology(self.settings, worker_ids)

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# The worker's side --------------------------------------------------------------------------------


class Consumer(ABC):
    """A worker's connection: consumes, acks, publishes its results and retries with confirms.

    Not thread-safe, except `call_soon_threadsafe`: one thread (the worker's connection thread) calls
    everything else, and the delivery and scheduled callbacks run in that thread, inside `poll`.
    A failure raises a BrokerError (BrokerUnavailable when the connection is lost); the worker then
    opens a new Consumer, and the broker returns this one's unacked deliveries to their queues.
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.settings = broker.settings
        self._worker_ids: tuple[str, ...] = ()
        self._redeclare = False

    # Primitives -----------------------------------------------------------------------------------

    @abstractmethod
    def _declare(self, worker_ids: Sequence[str]) -> None:
        """Declares the broker's topology with these workers' queues, on this connection."""

    @abstractmethod
    def consume(self, queue: str, prefetch: int, on_delivery: Callable[[Delivery], None]) -> None:
        """Starts consuming `queue`, at most `prefetch` deliveries unacked at once."""

    @abstractmethod
    def cancel(self) -> None:
        """Stops every consumer of this connection (deliveries already received stay unacked)."""

    @abstractmethod
    def poll(self, seconds: float) -> None:
        """Runs the callbacks that are due (deliveries, call_soon_threadsafe, call_later), waiting up
        to `seconds` for one; returns soon after some ran. Keeps the broker's heartbeats flowing."""

    @abstractmethod
    def steal(self, queue: str, timeout: float) -> Delivery | None:
        """Takes the next ready message of `queue` (another worker's), unacked, or None when there
        is none or the broker did not answer within `timeout` (a quorum queue without a leader
        never does). Acked or rejected by its tag like a consumed delivery, and returned to `queue`
        if this connection closes first. Raises QueueNotFound (without harm to the deliveries this
        connection holds: in RabbitMQ a 404 closes the channel, so each steal has one of its own)."""

    @abstractmethod
    def ack(self, tag: int) -> None:
        """Acks a delivery; may leave with the next poll rather than at once (no round trip)."""

    @abstractmethod
    def reject(self, tag: int, requeue: bool) -> None:
        """Back to its queue (requeue), or dead-lettered (the queue's dead-letter exchange)."""

    @abstractmethod
    def _publish(self, exchange: str, messages: Sequence[OutgoingMessage]) -> list[Verdict]:
        """One batch to one exchange, one wait for all its confirms; BrokerUnavailable if they do
        not all come within the broker timeout."""

    @abstractmethod
    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread: `callback` runs in the connection thread during a poll. Does nothing if
        the connection is gone (its deliveries are the broker's again)."""

    @abstractmethod
    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        """`callback` runs in the connection thread during a poll at least `seconds` from now."""

    @abstractmethod
    def close(self) -> None:
        """Closes the connection; never raises."""

    # Built on them --------------------------------------------------------------------------------

    def declare(self, worker_ids: Sequence[str] = ()) -> None:
        """Declares the topology with these workers' queues, again after a refused publish."""
        self._worker_ids = tuple(worker_ids)
        self._declare(self._worker_ids)
        self._redeclare = False

    def publish(self, messages: Sequence[tuple[str, OutgoingMessage]]) -> list[Verdict]:
        """Publishes (exchange, message) pairs, one confirm round per exchange; a verdict each.

        A refused message (nacked, or unroutable: a queue deleted under us) makes the next publish
        redeclare the topology first; the caller decides when to publish it again."""
        if self._redeclare:
            self.declare(self._worker_ids)
        verdicts: list[Verdict] = [Verdict.OK] * len(messages)
        for exchange in dict.fromkeys(exchange for exchange, _ in messages):
            indices = [i for i, (target, _) in enumerate(messages) if target == exchange]
            for index, verdict in zip(indices, self._publish(exchange, [messages[i][1] for i in indices]),
                                      strict=True):
                verdicts[index] = verdict
        self._redeclare = any(verdict is not Verdict.OK for verdict in verdicts)
        return verdicts

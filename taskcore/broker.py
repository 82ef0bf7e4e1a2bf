"""RabbitMQ topology (docs/architecture.md §4) and confirmed, persistent publishing.

Queue types: `tasks.shared`, `tasks.w.<id>` and `results` are quorum queues with x-delivery-limit,
so a message that keeps failing (a worker killed on it again and again, a handler that keeps
erroring) is dead-lettered to `tasks.dead` / `results.dead` instead of cycling forever; classic
queues have no delivery limit. The dead-letter queues are classic (they only hold messages for
inspection). Quorum queues must be durable and non-exclusive, which these are anyway.

Batched confirms: pika's BlockingChannel in confirm mode waits for each publish's confirm, which caps
a channel at about one round trip per message. Publisher instead puts the channel in confirm mode
itself and publishes a whole batch on the underlying channel (`BlockingChannel._impl`), then waits
once until every delivery tag is acked or nacked. That uses pika 1.x internals (`_impl`,
`_flush_output`, `_IoloopTimerContext`); they are confined to `ConfirmingChannel` below.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel, _IoloopTimerContext

from taskcore import keys as names
from taskcore.keys import Keys
from taskcore.messages import Task, TaskResult
from taskcore.settings import Settings

# (routing_key, body, message_id)
Message = tuple[str, bytes, str | None]


class PublishError(Exception):
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


# Topology -----------------------------------------------------------------------------------------

def work_queue_arguments(settings: Settings, dead_routing_key: str) -> dict[str, Any]:
    keys = Keys(settings.namespace)
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": keys.dead_exchange,
        "x-dead-letter-routing-key": dead_routing_key,
    }


def declare_worker_queue(channel: BlockingChannel, settings: Settings, worker_id: str) -> str:
    keys = Keys(settings.namespace)
    queue = keys.worker_queue(worker_id)
    channel.queue_declare(queue, durable=True,
                          arguments=work_queue_arguments(settings, names.TASKS_DEAD_ROUTING_KEY))
    channel.queue_bind(queue, keys.tasks_exchange, names.worker_routing_key(worker_id))
    return queue


def declare_topology(channel: BlockingChannel, settings: Settings, worker_ids: Iterable[str] = ()) -> None:
    """Declares everything (idempotent): exchanges, work queues with dead-lettering, dead queues."""
    keys = Keys(settings.namespace)
    for exchange in (keys.tasks_exchange, keys.results_exchange, keys.dead_exchange):
        channel.exchange_declare(exchange, "direct", durable=True)
    for queue, routing_key in ((keys.tasks_dead_queue, names.TASKS_DEAD_ROUTING_KEY),
                               (keys.results_dead_queue, names.RESULTS_DEAD_ROUTING_KEY)):
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, keys.dead_exchange, routing_key)
    channel.queue_declare(keys.shared_queue, durable=True,
                          arguments=work_queue_arguments(settings, names.TASKS_DEAD_ROUTING_KEY))
    channel.queue_bind(keys.shared_queue, keys.tasks_exchange, names.SHARED_ROUTING_KEY)
    channel.queue_declare(keys.results_queue, durable=True,
                          arguments=work_queue_arguments(settings, names.RESULTS_DEAD_ROUTING_KEY))
    channel.queue_bind(keys.results_queue, keys.results_exchange, names.RESULTS_ROUTING_KEY)
    for worker_id in worker_ids:
        declare_worker_queue(channel, settings, worker_id)


def connection_parameters(url: str, timeout: float) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    # A broker under a memory/disk alarm blocks publishers; fail instead of hanging the caller.
    params.blocked_connection_timeout = timeout
    return params


# Publishing ---------------------------------------------------------------------------------------

class ConfirmingChannel:
    """A channel in confirm mode that publishes a batch and then waits once for all confirms."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.connection = connection
        self.channel = connection.channel()
        self._next_tag = 1
        self._pending: dict[int, int] = {}  # delivery tag -> index in the batch
        self._outcome: list[str | None] = []
        self._returned: set[str | None] = set()
        selected: list[bool] = []
        impl = self.channel._impl
        impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                              callback=lambda _frame: selected.append(True))
        impl.add_on_return_callback(self._on_return)
        self.channel._flush_output(lambda: bool(selected))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        verdict = "ok" if isinstance(method, pika.spec.Basic.Ack) else "nack"
        tags = [t for t in self._pending if t <= method.delivery_tag] if method.multiple \
            else [method.delivery_tag]
        for tag in tags:
            index = self._pending.pop(tag, None)
            if index is not None:
                self._outcome[index] = verdict

    def _on_return(self, _channel: Any, _method: Any, properties: pika.BasicProperties, _body: bytes) -> None:
        # The broker sends basic.return before the ack of the same message.
        self._returned.add(properties.message_id)

    def publish(self, exchange: str, messages: Sequence[Message], todo: Sequence[int],
                outcome: list[str | None], timeout: float) -> None:
        """Publishes messages[i] for i in todo; fills outcome[i] with "ok", "nack" or "unroutable"."""
        self._outcome, self._returned, self._pending = outcome, set(), {}
        impl = self.channel._impl
        for index in todo:
            routing_key, body, message_id = messages[index]
            properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                              content_type="application/json", message_id=message_id)
            impl.basic_publish(exchange, routing_key, body, properties, mandatory=True)
            self._pending[self._next_tag] = index
            self._next_tag += 1
        with _IoloopTimerContext(timeout, self.connection._impl) as timer:
            self.channel._flush_output(lambda: not self._pending, timer.is_ready)
        if self._pending:
            raise pika.exceptions.AMQPConnectionError(f"no confirm within {timeout} s")
        for index in todo:
            if outcome[index] == "ok" and messages[index][2] in self._returned:
                outcome[index] = "unroutable"


class Publisher:
    """One connection and confirm-mode channel per process, reused; reopened once, transparently,
    when found stale (an idle Lambda environment's connection may have been closed by the broker).

    A message that was sent but not confirmed before a connection loss is published again on the
    new connection, so delivery is at least once; consumers are idempotent (COMPLETE, MARK_RUNNING).
    Thread-safe by a lock: pika connections are not.
    """

    def __init__(self, settings: Settings, url: str | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.url = url or settings.rabbitmq_url
        self._confirming: ConfirmingChannel | None = None
        self._lock = threading.RLock()

    @property
    def channel(self) -> BlockingChannel:
        """The open channel (for declarations, basic_get, queue_delete); opens it if needed."""
        with self._lock:
            return self._open().channel

    def publish(self, exchange: str, messages: Sequence[Message]) -> None:
        """Publishes persistent messages and waits for the broker's confirms; raises PublishError."""
        if not messages:
            return
        outcome: list[str | None] = [None] * len(messages)
        with self._lock:
            for attempt in (1, 2):
                todo = [i for i, verdict in enumerate(outcome) if verdict is None]
                try:
                    self._open().publish(exchange, messages, todo, outcome, self.settings.broker_timeout)
                    break
                except (pika.exceptions.AMQPError, OSError) as error:
                    self.close()
                    if attempt == 2:
                        unconfirmed = [i for i, verdict in enumerate(outcome) if verdict is None]
                        raise PublishError(f"broker unavailable: {error!r}",
                                           unconfirmed=unconfirmed) from error
        nacked = [i for i, verdict in enumerate(outcome) if verdict == "nack"]
        unroutable = [i for i, verdict in enumerate(outcome) if verdict == "unroutable"]
        if nacked or unroutable:
            raise PublishError(
                f"broker refused {len(nacked)} and could not route {len(unroutable)} message(s)",
                nacked=nacked, unroutable=unroutable)

    def publish_tasks(self, messages: Sequence[tuple[str, Task]]) -> None:
        """(routing_key, task) pairs to the tasks exchange; message_id = task_id."""
        self.publish(self.keys.tasks_exchange, [(rk, t.to_json(), t.task_id) for rk, t in messages])

    def publish_results(self, results: Sequence[TaskResult]) -> None:
        self.publish(self.keys.results_exchange,
                     [(names.RESULTS_ROUTING_KEY, r.to_json(), r.task_id) for r in results])

    def close(self) -> None:
        with self._lock:
            confirming, self._confirming = self._confirming, None
            if confirming is not None and confirming.connection.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                    confirming.connection.close()

    def _open(self) -> ConfirmingChannel:
        confirming = self._confirming
        if confirming is not None and confirming.connection.is_open and confirming.channel.is_open:
            try:
                # Reads whatever the broker sent while we were idle: a close shows up here, before
                # any message is written to a dead socket.
                confirming.connection.process_data_events(0)
                return confirming
            except (pika.exceptions.AMQPError, OSError):
                pass
        self.close()
        connection = pika.BlockingConnection(connection_parameters(self.url, self.settings.broker_timeout))
        self._confirming = ConfirmingChannel(connection)
        return self._confirming

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


_publishers: dict[tuple[str, str], Publisher] = {}
_publishers_lock = threading.Lock()


def publisher_for(settings: Settings) -> Publisher:
    """The process-wide Publisher for these settings (one per broker URL and namespace)."""
    key = (settings.rabbitmq_url, settings.namespace)
    with _publishers_lock:
        if key not in _publishers:
            _publishers[key] = Publisher(settings)
        return _publishers[key]

"""Amazon MQ for RabbitMQ event source mapping: a pika consumer that batches messages from one
queue, invokes the function with a genuine `aws:rmq` event, acks the batch on success and
requeues it on failure (docs/lambda_behaviours.md §5).

The consumer runs on the host's own event loop (pika's AsyncioConnection): no thread of its own,
so no hand-offs between threads and no GIL contention with the loop per batch, and heartbeats
flow from the loop's timers while an invocation runs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import decimal
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from localfaas.backoff import Backoff
from localfaas.invocation import InvocationOutcome
from localfaas.logs import LogSink
from localfaas.template import MqEvent


class Delivery(NamedTuple):
    """One message as the broker delivered it to the mapping's consumer."""

    method: Basic.Deliver
    properties: BasicProperties
    body: bytes


DEFAULT_HEARTBEAT = 30
RECONNECT_BACKOFF = Backoff(first=0.5, factor=2.0, limit=5.0)
JOIN_SECONDS = 5.0
CLOSE_SECONDS = 2.0  # how long a clean close may wait for the broker's Close-Ok

# Fixed English names: strftime's %b/%p follow the process locale, Lambda's rendering does not.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_timestamp(value: int | float | datetime.datetime | None) -> str | None:
    """AMQP timestamp as Lambda renders it: `May 1, 2024, 12:00:00 PM` (UTC)."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    else:
        moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
    moment = moment.astimezone(datetime.UTC)
    hour = moment.hour % 12 or 12
    return (f"{_MONTHS[moment.month - 1]} {moment.day}, {moment.year}, "
            f"{hour}:{moment.minute:02d}:{moment.second:02d} {'AM' if moment.hour < 12 else 'PM'}")


def render_header(value: Any) -> Any:
    """Header values as Lambda serialises them: long strings become `{"bytes": [...]}`."""
    if isinstance(value, str):
        return {"bytes": list(value.encode())}
    if isinstance(value, bytes | bytearray):
        return {"bytes": list(value)}
    if isinstance(value, dict):
        return {str(key): render_header(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render_header(item) for item in value]
    if isinstance(value, decimal.Decimal):  # AMQP decimal: JSON has no such type
        return float(value)
    if isinstance(value, datetime.datetime):  # AMQP timestamp inside a table
        return format_timestamp(value)
    return value  # bool, int, float, None pass through as JSON already renders them


def basic_properties(properties: BasicProperties, body: bytes) -> dict[str, Any]:
    return {
        "contentType": properties.content_type,
        "contentEncoding": properties.content_encoding,
        "headers": None if properties.headers is None else render_header(properties.headers),
        "deliveryMode": properties.delivery_mode,
        "priority": properties.priority,
        "correlationId": properties.correlation_id,
        "replyTo": properties.reply_to,
        "expiration": properties.expiration,
        "messageId": properties.message_id,
        "timestamp": format_timestamp(properties.timestamp),
        "type": properties.type,
        "userId": properties.user_id,
        "appId": properties.app_id,
        "clusterId": properties.cluster_id,
        "bodySize": len(body),
    }


def build_event(event: MqEvent, messages: Sequence[Delivery]) -> dict[str, Any]:
    """The `aws:rmq` event for one batch; one mapping reads one queue, hence one key."""
    return {
        "eventSource": "aws:rmq",
        "eventSourceArn": event.broker_arn,
        "rmqMessagesByQueue": {
            f"{event.queue}::{event.virtual_host}": [
                {
                    "basicProperties": basic_properties(properties, body),
                    "redelivered": bool(method.redelivered),
                    "data": base64.b64encode(body).decode("ascii"),
                }
                for method, properties, body in messages
            ]
        },
    }


def connection_parameters(broker_url: str, virtual_host: str, client_name: str) -> pika.URLParameters:
    """The broker URL with the mapping's vhost in place of the URL's own."""
    parts = urlsplit(broker_url)
    url = urlunsplit(parts._replace(path="/" + quote(virtual_host, safe="")))
    parameters = pika.URLParameters(url)
    if "heartbeat" not in parse_qs(parts.query):
        parameters.heartbeat = DEFAULT_HEARTBEAT
    # Named so that the connection can be told apart (and closed) in the broker's tools.
    parameters.client_properties = {"connection_name": client_name}
    return parameters


class _Cancelled(Exception):
    """The broker cancelled our consumer (queue deleted): resubscribe like after a drop."""


class MqMapping:
    def __init__(self, function_name: str, event: MqEvent, broker_url: str,
                 invoke: Callable[[bytes], Awaitable[InvocationOutcome]], loop: asyncio.AbstractEventLoop,
                 logs: LogSink) -> None:
        self.function_name = function_name
        self.event = event
        self.parameters = connection_parameters(
            broker_url, event.virtual_host, f"localfaas {function_name} <- {event.queue}")
        self._invoke = invoke
        self._loop = loop
        self._logs = logs
        self._task: asyncio.Task[None] | None = None
        self._connection: AsyncioConnection | None = None
        self._closed: asyncio.Future[Exception] | None = None  # the connection's close reason
        # Set (to the exception to raise) when the connection or channel goes, or the broker
        # cancels the consumer; the consume loop waits on it alongside everything else.
        self._problem: asyncio.Future[Exception] | None = None
        self._pending: list[Delivery] = []
        self._first_at = 0.0  # arrival time of the oldest pending message
        self._wakeup: asyncio.Future[None] | None = None  # the consume loop waiting for messages
        self.connected = False
        self.connections = 0
        self.batches = self.messages = self.acked = self.requeued = self.failed_batches = 0
        self.last_error: str | None = None
        self._reported: str | None = None  # the problem last logged, to log each one once

    def _log(self, text: str) -> None:
        self._logs.host(f"{self.function_name}: mq {self.event.name} ({self.event.queue}): {text}")

    def start(self) -> None:
        """Start consuming on the loop (callable from the loop's thread or any other)."""
        self._loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        self._task = self._loop.create_task(self._run(), name=f"mq-{self.function_name}-{self.event.name}")

    async def close(self) -> None:
        """Stop consuming; an unacked batch goes back to the broker with the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stop(self) -> None:
        """`close` from a thread other than the loop's."""
        asyncio.run_coroutine_threadsafe(self.close(), self._loop).result(JOIN_SECONDS)

    def status(self) -> dict[str, Any]:
        return {
            "function": self.function_name, "queue": self.event.queue,
            "vhost": self.event.virtual_host, "connected": self.connected,
            "batches": self.batches, "messages": self.messages, "acked": self.acked,
            "requeued": self.requeued, "failed_batches": self.failed_batches,
            "reconnects": max(0, self.connections - 1), "last_error": self.last_error,
        }

    # -- the consumer ---------------------------------------------------------------------------

    async def _run(self) -> None:
        retry = 0  # reconnects since a connection was last up
        while True:
            connections = self.connections
            opened = [False]
            try:
                await self._consume(opened)
            except Exception as exc:  # the host must survive anything the broker does
                self._failed(exc, reached=opened[0])
            finally:
                self.connected = False
                await self._close()
            if self.connections > connections:  # it was up: this is a fresh outage
                retry = 0
            await asyncio.sleep(RECONNECT_BACKOFF.delay(retry))
            retry += 1

    def _failed(self, exc: Exception, reached: bool) -> None:
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == 404:
            error = (f"queue {self.event.queue!r} does not exist on vhost {self.event.virtual_host!r} "
                     "(the mapping does not declare queues: declare it on the broker)")
        elif isinstance(exc, _Cancelled):
            error = "consumer cancelled by the broker (queue deleted?)"
        else:
            # pika's connect errors have an empty str(); their repr names the cause.
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
            where = f"{self.parameters.host}:{self.parameters.port}"
            error = f"connection to {where} lost" if reached else f"cannot connect to {where}"
            error += f": {detail}"
        self.last_error = error
        # Say it once per distinct problem, not once per retry.
        if error != self._reported:
            self._reported = error
            self._log(f"{error}; retrying (backoff {RECONNECT_BACKOFF.first:g}s doubling to "
                      f"{RECONNECT_BACKOFF.limit:g}s)")

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        closed = self._closed
        if connection is None or closed is None:
            return
        if not (connection.is_closing or connection.is_closed):
            with contextlib.suppress(Exception):  # already dead: nothing left to release
                connection.close()
        if not closed.done():
            # Bounded: a broker that does not answer Close must not hold up a stop.
            await asyncio.wait([closed], timeout=CLOSE_SECONDS)

    async def _until(self, future: asyncio.Future[Any]) -> None:
        """Wait for the future; raise the connection's problem if there is one first."""
        problem = self._problem
        assert problem is not None
        if not future.done():
            await asyncio.wait([future, problem], return_when=asyncio.FIRST_COMPLETED)
        if problem.done():
            raise problem.result()

    def _wake(self) -> None:
        waiter, self._wakeup = self._wakeup, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _connect(self, reached: list[bool]) -> Channel:
        loop = asyncio.get_running_loop()
        self._problem = problem = loop.create_future()
        self._closed = closed = loop.create_future()
        opened: asyncio.Future[None] = loop.create_future()

        def raise_problem(exc: Exception) -> None:
            # Bound to this connection's future: a late close of an old connection must not
            # end the next one.
            if not problem.done():
                problem.set_result(exc)
            self._wake()

        def on_open(_connection: AsyncioConnection) -> None:
            opened.set_result(None)

        def on_open_error(_connection: AsyncioConnection, error: BaseException | str) -> None:
            if not opened.done():
                opened.set_exception(error if isinstance(error, Exception)
                                     else pika.exceptions.AMQPConnectionError(error))
            if not closed.done():
                closed.set_result(pika.exceptions.AMQPConnectionError(error))

        def on_close(_connection: AsyncioConnection, reason: Exception) -> None:
            if not closed.done():
                closed.set_result(reason)
            raise_problem(reason)

        self._connection = connection = AsyncioConnection(
            self.parameters, on_open_callback=on_open, on_open_error_callback=on_open_error,
            on_close_callback=on_close, custom_ioloop=loop)
        await opened
        reached[0] = True  # from here a failure is a lost connection, not a refused one
        channel_open: asyncio.Future[Channel] = loop.create_future()
        connection.channel(on_open_callback=channel_open.set_result)
        await self._until(channel_open)
        channel = channel_open.result()
        channel.add_on_close_callback(lambda _channel, reason: raise_problem(reason))
        channel.add_on_cancel_callback(lambda _frame: raise_problem(_Cancelled()))
        qos_ok: asyncio.Future[Any] = loop.create_future()
        channel.basic_qos(prefetch_count=self.event.batch_size, callback=qos_ok.set_result)
        await self._until(qos_ok)
        consume_ok: asyncio.Future[Any] = loop.create_future()
        channel.basic_consume(self.event.queue, self._on_message, callback=consume_ok.set_result)
        await self._until(consume_ok)
        return channel

    def _on_message(self, _channel: Channel, method: Basic.Deliver, properties: BasicProperties,
                    body: bytes) -> None:
        pending = self._pending
        if not pending:
            self._first_at = time.monotonic()
            self._wake()  # a window may start
        pending.append(Delivery(method, properties, body))
        if len(pending) == self.event.batch_size:
            self._wake()

    async def _consume(self, opened: list[bool]) -> None:
        self._pending = pending = []
        channel = await self._connect(opened)
        problem = self._problem
        assert problem is not None
        self.connections += 1
        self.connected = True
        if self.connections > 1:
            self._log(f"reconnected, consuming again (connection {self.connections})")
        elif self._reported is not None:
            self._log("consuming")
        self._reported = None
        window, size = self.event.window_seconds, self.event.batch_size
        loop = asyncio.get_running_loop()
        while True:
            if problem.done():
                raise problem.result()
            if pending:
                wait = self._first_at + window - time.monotonic()
                if len(pending) >= size or wait <= 0:
                    # The prefetch is the batch size, so this is normally every pending message.
                    batch, self._pending = pending[:size], pending[size:]
                    await self._deliver(channel, batch)
                    pending = self._pending
                    continue
            else:
                wait = None
            self._wakeup = waiter = loop.create_future()
            if wait is None:
                await waiter
            else:
                handle = loop.call_later(wait, self._wake)
                await waiter
                handle.cancel()

    async def _deliver(self, channel: Channel, batch: list[Delivery]) -> None:
        self.batches += 1
        self.messages += len(batch)
        payload = json.dumps(build_event(self.event, batch)).encode()
        # Its own task: a stop or a broker drop must not cancel the invocation under the function.
        invocation = asyncio.ensure_future(self._invoke(payload))
        invocation.add_done_callback(_retrieve)
        try:
            await self._until(invocation)
        except asyncio.CancelledError:
            raise  # stopping, unacked: closing the connection hands the batch back to the broker
        except Exception:
            if not invocation.done():
                # Lambda runs one batch per RabbitMQ mapping at a time: let this one finish before
                # reconnecting, or the redelivered batch would run alongside it.
                await asyncio.wait([invocation])
            raise
        error = self._error_of(invocation)
        # The batch is always the oldest unsettled deliveries on this channel (later ones sit in
        # `pending` with higher tags), so settling up to its last tag with multiple=True is exact.
        last_tag = batch[-1].method.delivery_tag
        if error is None:
            channel.basic_ack(delivery_tag=last_tag, multiple=True)
            self.acked += len(batch)
        else:
            channel.basic_nack(delivery_tag=last_tag, multiple=True, requeue=True)
            self.requeued += len(batch)
            self.failed_batches += 1
            self.last_error = f"batch failed: {error}"
            self._log(f"batch of {len(batch)} failed ({error}); messages requeued")

    @staticmethod
    def _error_of(invocation: asyncio.Future[InvocationOutcome]) -> str | None:
        exc = invocation.exception()
        if exc is not None:
            return f"{type(exc).__name__}: {exc}"
        outcome = invocation.result()
        return None if outcome.ok else (outcome.error_type or "Unhandled")


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an invocation's exception as seen: it is reported through the batch's outcome."""
    if not future.cancelled():
        future.exception()

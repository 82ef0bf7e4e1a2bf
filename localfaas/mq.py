"""Amazon MQ for RabbitMQ event source mapping: a pika consumer that batches messages from one
queue, invokes the function with a genuine `aws:rmq` event, acks the batch on success and
requeues it on failure (docs/lambda_behaviours.md §5)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import datetime
import decimal
import json
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
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
# Upper bound on one blocking wait: the stop flag is honoured at least this often even if a
# wake-up callback is lost in a race with the connection closing.
POLL_SECONDS = 1.0

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
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: pika.BlockingConnection | None = None
        self.connected = False
        self.connections = 0
        self.batches = self.messages = self.acked = self.requeued = self.failed_batches = 0
        self.last_error: str | None = None
        self._reported: str | None = None  # the problem last logged, to log each one once

    def _log(self, text: str) -> None:
        self._logs.host(f"{self.function_name}: mq {self.event.name} ({self.event.queue}): {text}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"mq-{self.function_name}-{self.event.name}")
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)

    def status(self) -> dict[str, Any]:
        return {
            "function": self.function_name, "queue": self.event.queue,
            "vhost": self.event.virtual_host, "connected": self.connected,
            "batches": self.batches, "messages": self.messages, "acked": self.acked,
            "requeued": self.requeued, "failed_batches": self.failed_batches,
            "reconnects": max(0, self.connections - 1), "last_error": self.last_error,
        }

    def _wake(self) -> None:
        """Interrupt process_data_events from another thread (only pika's thread-safe call)."""
        connection = self._connection
        if connection is not None:
            # Closed or closing: then the consumer thread is leaving anyway.
            with contextlib.suppress(Exception):
                connection.add_callback_threadsafe(lambda: None)

    # -- the consumer thread ------------------------------------------------------------------

    def _run(self) -> None:
        retry = 0  # reconnects since a connection was last up
        while not self._stopping.is_set():
            connections = self.connections
            try:
                self._consume()
            except Exception as exc:  # the host must survive anything the broker does
                if not self._stopping.is_set():
                    self._failed(exc, reached=self._connection is not None)
            finally:
                self.connected = False
                self._close()
            if self._stopping.is_set():
                break
            if self.connections > connections:  # it was up: this is a fresh outage
                retry = 0
            self._stopping.wait(RECONNECT_BACKOFF.delay(retry))
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

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # already dead: nothing left to release
                connection.close()

    def _consume(self) -> None:
        self._connection = connection = pika.BlockingConnection(self.parameters)
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.event.batch_size)
        pending: list[tuple[float, Delivery]] = []  # (arrival time, message)
        cancelled: list[bool] = []

        def on_message(_channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties,
                       body: bytes) -> None:
            pending.append((time.monotonic(), Delivery(method, properties, body)))

        channel.add_on_cancel_callback(lambda _frame: cancelled.append(True))
        channel.basic_consume(self.event.queue, on_message)
        self.connections += 1
        self.connected = True
        if self.connections > 1:
            self._log(f"reconnected, consuming again (connection {self.connections})")
        elif self._reported is not None:
            self._log("consuming")
        self._reported = None
        window, size = self.event.window_seconds, self.event.batch_size
        while not self._stopping.is_set():
            if cancelled:
                raise _Cancelled()
            now = time.monotonic()
            if pending and (len(pending) >= size or now - pending[0][0] >= window):
                batch = [message for _, message in pending[:size]]
                del pending[:size]
                self._deliver(connection, channel, batch)
                continue
            wait = POLL_SECONDS if not pending else pending[0][0] + window - now
            connection.process_data_events(time_limit=max(0.0, min(wait, POLL_SECONDS)))

    def _deliver(self, connection: pika.BlockingConnection, channel: BlockingChannel,
                 batch: list[Delivery]) -> None:
        self.batches += 1
        self.messages += len(batch)
        payload = json.dumps(build_event(self.event, batch)).encode()
        future = asyncio.run_coroutine_threadsafe(self._invoke(payload), self._loop)
        future.add_done_callback(lambda _future: self._wake())
        try:
            # Keep servicing the connection while the function runs, so that heartbeats flow
            # and a long invocation does not cost us the broker connection.
            while not future.done():
                if self._stopping.is_set():
                    return  # unacked: closing the connection hands the batch back to the broker
                connection.process_data_events(time_limit=POLL_SECONDS)
        except Exception:
            # Lambda runs one batch per RabbitMQ mapping at a time: let this one finish before
            # reconnecting, or the redelivered batch would run alongside it.
            self._wait(future)
            raise
        error = self._error_of(future)
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

    def _wait(self, future: concurrent.futures.Future[InvocationOutcome]) -> None:
        while not future.done() and not self._stopping.is_set():
            self._stopping.wait(0.1)

    @staticmethod
    def _error_of(future: concurrent.futures.Future[InvocationOutcome]) -> str | None:
        try:
            outcome = future.result()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if outcome.ok else (outcome.error_type or "Unhandled")

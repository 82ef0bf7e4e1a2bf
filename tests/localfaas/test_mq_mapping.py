"""The MQ event source mapping against the real RabbitMQ on 127.0.0.1:5672: first the consumer on
its own (with an invoke of the test's), then end to end through a running localfaas host."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pytest

from localfaas.invocation import InvocationOutcome
from localfaas.logs import LogSink
from localfaas.mq import MqMapping
from localfaas.template import MqEvent
from taskfaas.stack import RABBITMQ_URL, eventually

BROKER_URL = RABBITMQ_URL
# RabbitMQ checks a message's user_id against the user that published it.
BROKER_USER = unquote(urlsplit(BROKER_URL).username or "guest")
TEMPLATE = Path(__file__).parent / "fixtures" / "mq_template.yaml"
BROKER_ARN = "arn:aws:mq:us-east-1:000000000000:broker:local:b-00000000-0000-0000-0000-000000000000"


# -- helpers --------------------------------------------------------------------------------------

def broker() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(BROKER_URL))


def declare(queue: str) -> None:
    with broker() as connection:
        connection.channel().queue_declare(queue, durable=False, auto_delete=False)


def publish(queue: str, *bodies: Any, properties: pika.BasicProperties | None = None) -> None:
    with broker() as connection:
        channel = connection.channel()
        for body in bodies:
            channel.basic_publish("", queue, json.dumps(body).encode(), properties)


def ready_count(queue: str) -> int:
    with broker() as connection:
        return connection.channel().queue_declare(queue, passive=True).method.message_count


def bodies_of(event: dict[str, Any]) -> list[Any]:
    [messages] = event["rmqMessagesByQueue"].values()
    return [json.loads(base64.b64decode(message["data"])) for message in messages]


def redelivered(event: dict[str, Any]) -> list[bool]:
    [messages] = event["rmqMessagesByQueue"].values()
    return [message["redelivered"] for message in messages]


def close_broker_side(connection_name: str) -> None:
    """Have RabbitMQ itself close our connection, as a broker restart would."""
    listing = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    pids = [line.split("\t")[0] for line in listing.splitlines() if connection_name in line]
    assert pids, f"connection {connection_name!r} not found:\n{listing}"
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: simulated restart"],
                       capture_output=True, text=True, timeout=30, check=True)


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"lf-test-{uuid.uuid4().hex[:12]}"
    declare(name)
    yield name
    with broker() as connection:
        connection.channel().queue_delete(name)


class Records:
    """The events the fixture function appended to its record file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def events(self) -> list[dict[str, Any]]:
        return [record["event"] for record in self.all()]

    def wait(self, count: int, timeout: float) -> list[dict[str, Any]]:
        return eventually(lambda: len(self.all()) >= count and self.all(), timeout, f"{count} batches")


def start(localfaas: Callable[..., Any], queue: str, tmp_path: Path, env: dict[str, str] | None = None,
          **parameters: str) -> tuple[Any, Records]:
    records = Records(tmp_path / "records.jsonl")
    host = localfaas(TEMPLATE, overrides={"Queue": queue, "RecordFile": str(records.path), **parameters},
                     env=env)
    eventually(lambda: mapping_status(host)["connected"], 10, "the mapping to connect")
    return host, records


def mapping_status(host: Any) -> dict[str, Any]:
    [status] = host.status()["mappings"]
    return status


# -- the consumer on its own ----------------------------------------------------------------------

def test_consumer_waits_for_its_queue_survives_a_broker_drop_and_stops(tmp_path: Path) -> None:
    queue = f"lf-test-{uuid.uuid4().hex[:12]}"
    received: list[dict[str, Any]] = []

    async def invoke(payload: bytes) -> InvocationOutcome:
        event = json.loads(payload)
        received.append(event)
        [messages] = event["rmqMessagesByQueue"].values()
        if any(json.loads(base64.b64decode(m["data"])).get("raise") and not m["redelivered"]
               for m in messages):
            raise RuntimeError("invoke itself failed")
        return InvocationOutcome("request", b"null")

    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    console = io.StringIO()
    event = MqEvent("Jobs", BROKER_ARN, queue, batch_size=10, window_seconds=0)
    mapping = MqMapping("Direct", event, BROKER_URL, invoke, loop, LogSink(tmp_path / "logs", console))
    try:
        mapping.start()
        # The queue does not exist yet: said clearly, retried, nothing crashes.
        eventually(lambda: "does not exist" in console.getvalue(), 5, "the missing-queue message")
        assert f"queue '{queue}' does not exist on vhost '/'" in console.getvalue()
        assert mapping.status()["connected"] is False
        declare(queue)
        publish(queue, {"n": 1}, {"raise": True})
        eventually(lambda: mapping.status()["acked"] == 2, 10, "the batch to be acked")
        assert mapping.status()["connected"] is True
        # The first delivery made invoke raise: requeued, then redelivered and acked.
        seen = [(body, m["redelivered"]) for e in received
                for body, m in zip(bodies_of(e), e["rmqMessagesByQueue"][f"{queue}::/"], strict=True)]
        assert ({"raise": True}, False) in seen and ({"raise": True}, True) in seen
        assert ({"n": 1}, False) in seen
        assert mapping.status()["requeued"] >= 1
        assert "failed (RuntimeError: invoke itself failed); messages requeued" in console.getvalue()

        close_broker_side(f"localfaas Direct <- {queue}")
        eventually(lambda: mapping.status()["reconnects"] == 1 and mapping.status()["connected"], 10,
                 "the reconnect")
        assert "reconnected, consuming again" in console.getvalue()
        assert "CONNECTION_FORCED" in console.getvalue()
        publish(queue, {"n": 2})
        eventually(lambda: mapping.status()["acked"] == 3, 10, "the message after the reconnect")
        assert bodies_of(received[-1]) == [{"n": 2}]
        assert ready_count(queue) == 0

        started = time.monotonic()
        mapping.stop()
        assert time.monotonic() - started < 3
        assert mapping.status()["connected"] is False
        assert not any(t.name.startswith("mq-Direct") for t in threading.enumerate())
    finally:
        mapping.stop()
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(5)
        loop.close()
        with broker() as connection:
            connection.channel().queue_delete(queue)


# -- end to end through the host ------------------------------------------------------------------

def test_batches_close_at_batch_size(localfaas: Callable[..., Any], queue: str, tmp_path: Path) -> None:
    host, records = start(localfaas, queue, tmp_path, BatchSize="5", Window="10")
    published = time.time()
    publish(queue, *({"n": n} for n in range(10)))
    batches = records.wait(2, 8)
    assert [bodies_of(r["event"]) for r in batches] == [[{"n": n} for n in range(5)],
                                                         [{"n": n} for n in range(5, 10)]]
    # Well before the 10 s window: the batches closed because they were full.
    assert all(r["at"] - published < 6 for r in batches)
    eventually(lambda: mapping_status(host)["acked"] == 10, 5, "the acks")
    assert mapping_status(host)["batches"] == 2


def test_batch_closes_at_window_end(localfaas: Callable[..., Any], queue: str, tmp_path: Path) -> None:
    host, records = start(localfaas, queue, tmp_path, BatchSize="100", Window="1")
    published = time.time()
    publish(queue, {"n": 0}, {"n": 1}, {"n": 2})
    [batch] = records.wait(1, 6)
    assert bodies_of(batch["event"]) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert batch["at"] - published >= 0.9  # the window held the batch open
    time.sleep(0.5)
    assert len(records.all()) == 1
    assert (mapping_status(host)["batches"], mapping_status(host)["messages"]) == (1, 3)


def test_event_shape_and_ack(localfaas: Callable[..., Any], queue: str, tmp_path: Path) -> None:
    host, records = start(localfaas, queue, tmp_path, BatchSize="10", Window="0")
    properties = pika.BasicProperties(
        content_type="application/json", headers={"task_id": "t-1", "attempt": 2}, delivery_mode=2,
        message_id="m-8f3a", correlation_id="t-1", timestamp=1714564800, user_id=BROKER_USER)
    publish(queue, {"result": "42"}, properties=properties)
    [event] = [r["event"] for r in records.wait(1, 8)]
    body = json.dumps({"result": "42"}).encode()

    assert event == {
        "eventSource": "aws:rmq",
        "eventSourceArn": BROKER_ARN,
        "rmqMessagesByQueue": {f"{queue}::/": [{
            "basicProperties": {
                "contentType": "application/json",
                "contentEncoding": None,
                "headers": {"task_id": {"bytes": [116, 45, 49]}, "attempt": 2},
                "deliveryMode": 2,
                "priority": None,
                "correlationId": "t-1",
                "replyTo": None,
                "expiration": None,
                "messageId": "m-8f3a",
                "timestamp": "May 1, 2024, 12:00:00 PM",
                "type": None,
                "userId": BROKER_USER,
                "appId": None,
                "clusterId": None,
                "bodySize": len(body),
            },
            "redelivered": False,
            "data": base64.b64encode(body).decode(),
        }]},
    }
    eventually(lambda: mapping_status(host)["acked"] == 1, 5, "the ack")
    assert ready_count(queue) == 0
    # Had anything been left unacked, closing the consumer's connection would requeue it.
    host.stop()
    assert ready_count(queue) == 0
    assert len(records.all()) == 1


def test_failed_batch_is_redelivered(localfaas: Callable[..., Any], queue: str, tmp_path: Path) -> None:
    host, records = start(localfaas, queue, tmp_path, BatchSize="10", Window="0")
    publish(queue, {"fail": True, "id": "x"})
    first, second = [r["event"] for r in records.wait(2, 10)]
    assert bodies_of(first) == bodies_of(second) == [{"fail": True, "id": "x"}]
    assert redelivered(first) + redelivered(second) == [False, True]
    eventually(lambda: mapping_status(host)["acked"] == 1, 5, "the ack of the redelivery")
    status = mapping_status(host)
    assert (status["batches"], status["requeued"], status["messages"]) == (2, 1, 2)
    assert "batch of 1 failed (RuntimeError); messages requeued" in host.console()
    host.wait_for_log("Consumer", "failing on request")
    assert ready_count(queue) == 0


def test_timed_out_batch_is_redelivered(localfaas: Callable[..., Any], queue: str, tmp_path: Path) -> None:
    host, records = start(localfaas, queue, tmp_path, BatchSize="10", Window="0", FunctionTimeout="1")
    publish(queue, {"sleep": 5})
    first, second = [r["event"] for r in records.wait(2, 10)]
    assert redelivered(first) + redelivered(second) == [False, True]
    eventually(lambda: mapping_status(host)["acked"] == 1, 5, "the ack of the redelivery")
    assert "failed (Sandbox.Timedout); messages requeued" in host.console()
    host.wait_for_log("Consumer", "Task timed out after 1.00 seconds")
    assert ready_count(queue) == 0


def test_long_invocation_keeps_the_connection(localfaas: Callable[..., Any], queue: str,
                                              tmp_path: Path) -> None:
    # Heartbeat 2 s: a consumer that stopped servicing its connection during the 7 s invocation
    # would be dropped by the broker after ~4 s, and the batch redelivered.
    host, records = start(localfaas, queue, tmp_path, env={"RABBITMQ_URL": BROKER_URL + "?heartbeat=2"},
                          BatchSize="10", Window="0", FunctionTimeout="15")
    publish(queue, {"sleep": 7})
    records.wait(1, 8)
    eventually(lambda: mapping_status(host)["acked"] == 1, 12, "the ack after the long invocation")
    status = mapping_status(host)
    assert status["connected"] is True
    assert (status["reconnects"], status["requeued"], status["last_error"]) == (0, 0, None)
    assert len(records.all()) == 1
    assert "reconnected" not in host.console()
    assert ready_count(queue) == 0

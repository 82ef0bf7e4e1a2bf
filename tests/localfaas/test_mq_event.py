"""The `aws:rmq` event built from pika deliveries, field by field (docs/lambda_behaviours.md §5.1)."""

from __future__ import annotations

import base64
import datetime
import decimal
import json

from pika.spec import Basic, BasicProperties

from localfaas.mq import build_event, connection_parameters, format_timestamp, render_header
from localfaas.template import MqEvent

BROKER = "arn:aws:mq:us-east-1:123456789012:broker:tasks:b-9bcfa592-423a-4942-879d-eb284b418fc8"
MAY_1_NOON = int(datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.UTC).timestamp())
PROPERTY_KEYS = ["contentType", "contentEncoding", "headers", "deliveryMode", "priority",
                 "correlationId", "replyTo", "expiration", "messageId", "timestamp", "type",
                 "userId", "appId", "clusterId", "bodySize"]


def deliver(tag: int = 1, redelivered: bool = False) -> Basic.Deliver:
    return Basic.Deliver(consumer_tag="ctag", delivery_tag=tag, redelivered=redelivered,
                         exchange="", routing_key="results")


def test_reference_example_field_by_field() -> None:
    body = b'{"result": "42"}'
    properties = BasicProperties(
        content_type="application/json", headers={"task_id": "t-1", "attempt": 2}, delivery_mode=2,
        correlation_id="t-1", message_id="m-8f3a", timestamp=MAY_1_NOON,
        user_id="AIDACKCEVSQ6C2EXAMPLE")
    event = build_event(MqEvent("Results", BROKER, "results"), [(deliver(), properties, body)])

    assert list(event) == ["eventSource", "eventSourceArn", "rmqMessagesByQueue"]
    assert event["eventSource"] == "aws:rmq"
    assert event["eventSourceArn"] == BROKER
    assert list(event["rmqMessagesByQueue"]) == ["results::/"]
    [message] = event["rmqMessagesByQueue"]["results::/"]
    assert list(message) == ["basicProperties", "redelivered", "data"]
    assert message["redelivered"] is False
    assert message["data"] == base64.b64encode(body).decode()
    assert base64.b64decode(message["data"]) == body
    props = message["basicProperties"]
    assert list(props) == PROPERTY_KEYS
    assert props == {
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
        "userId": "AIDACKCEVSQ6C2EXAMPLE",
        "appId": None,
        "clusterId": None,
        "bodySize": len(body),
    }
    json.dumps(event)  # the whole event must be JSON as it is


def test_absent_properties_are_null_and_body_size_counts_bytes() -> None:
    body = "héllo".encode()  # 6 bytes, 5 characters
    event = build_event(MqEvent("E", BROKER, "q"), [(deliver(), BasicProperties(), body)])
    props = event["rmqMessagesByQueue"]["q::/"][0]["basicProperties"]
    assert props["bodySize"] == 6
    assert {key: value for key, value in props.items() if key != "bodySize"} == dict.fromkeys(
        PROPERTY_KEYS[:-1])


def test_every_property_is_carried() -> None:
    properties = BasicProperties(
        content_type="text/plain", content_encoding="gzip", headers={}, delivery_mode=1, priority=7,
        correlation_id="c", reply_to="r", expiration="60000", message_id="m", timestamp=0,
        type="t", user_id="u", app_id="a", cluster_id="cl")
    props = build_event(MqEvent("E", BROKER, "q"), [(deliver(), properties, b"")])[
        "rmqMessagesByQueue"]["q::/"][0]["basicProperties"]
    assert props == {
        "contentType": "text/plain", "contentEncoding": "gzip", "headers": {}, "deliveryMode": 1,
        "priority": 7, "correlationId": "c", "replyTo": "r", "expiration": "60000",
        "messageId": "m", "timestamp": "Jan 1, 1970, 12:00:00 AM", "type": "t", "userId": "u",
        "appId": "a", "clusterId": "cl", "bodySize": 0,
    }


def test_key_uses_the_virtual_host_and_batches_keep_order() -> None:
    event = MqEvent("E", BROKER, "jobs", virtual_host="tenant-a")
    messages = [(deliver(1), BasicProperties(), b"one"), (deliver(2, redelivered=True), BasicProperties(),
                                                         b"\x00\xff binary")]
    built = build_event(event, messages)
    assert list(built["rmqMessagesByQueue"]) == ["jobs::tenant-a"]
    first, second = built["rmqMessagesByQueue"]["jobs::tenant-a"]
    assert (first["redelivered"], base64.b64decode(first["data"])) == (False, b"one")
    assert (second["redelivered"], base64.b64decode(second["data"])) == (True, b"\x00\xff binary")
    assert second["basicProperties"]["bodySize"] == 9


def test_timestamp_rendering() -> None:
    assert format_timestamp(None) is None
    assert format_timestamp(MAY_1_NOON) == "May 1, 2024, 12:00:00 PM"
    assert format_timestamp(2021) == "Jan 1, 1970, 12:33:41 AM"  # the docs' own example
    assert format_timestamp(MAY_1_NOON + 13 * 3600 + 5 * 60 + 9) == "May 2, 2024, 1:05:09 AM"
    assert format_timestamp(MAY_1_NOON - 1) == "May 1, 2024, 11:59:59 AM"
    assert format_timestamp(datetime.datetime(2024, 12, 25, 23, 0, 0)) == "Dec 25, 2024, 11:00:00 PM"


def test_header_values() -> None:
    assert render_header("value1") == {"bytes": [118, 97, 108, 117, 101, 49]}
    assert render_header(b"\x01\x02") == {"bytes": [1, 2]}
    assert render_header("é") == {"bytes": [195, 169]}
    assert render_header(42) == 42
    assert render_header(-1.5) == -1.5
    assert render_header(True) is True
    assert render_header(None) is None
    assert render_header(decimal.Decimal("1.25")) == 1.25
    assert render_header({"outer": {"inner": "x", "n": 1}, "list": ["a", 2, False]}) == {
        "outer": {"inner": {"bytes": [120]}, "n": 1},
        "list": [{"bytes": [97]}, 2, False],
    }


def test_connection_parameters_take_the_mapping_vhost_and_heartbeat() -> None:
    default = connection_parameters("amqp://guest:guest@127.0.0.1:5672/%2F", "tenant/a", "x")
    assert default.virtual_host == "tenant/a"
    assert default.heartbeat == 30
    assert default.client_properties == {"connection_name": "x"}
    explicit = connection_parameters("amqp://u:p@broker:5673/other?heartbeat=2", "/", "x")
    assert (explicit.virtual_host, explicit.heartbeat) == ("/", 2)
    assert (explicit.host, explicit.port) == ("broker", 5673)
    assert explicit.credentials.username == "u"
    bare = connection_parameters("amqp://guest:guest@localhost", "/", "x")
    assert bare.virtual_host == "/"

"""Bad input through the real function URLs (localfaas running template.yaml): what docs/openapi.yaml
and docs/taskcore.md say the client gets, and that a refused request changes nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from localfaas.aws import MAX_PAYLOAD_BYTES
from taskfaas.stack import Stack, http

JSON = {"Content-Type": "application/json"}


def produce(stack: Stack, raw: bytes) -> tuple[int, Any]:
    status, _, reply = http("POST", stack.producer + "produce", raw, JSON)
    return status, json.loads(reply)


def supervise(stack: Stack, raw: bytes) -> tuple[int, Any]:
    url = stack.supervisor + "supervise"
    status, _, reply = http("POST", url, raw, stack.signer.headers("POST", url, raw, JSON))
    return status, json.loads(reply)


def task_counts(stack: Stack) -> dict[str, int]:
    return stack.stats()["tasks"]


@pytest.mark.parametrize("raw", [
    b'{"type": "hash", "payload": {"data": "\xff\xfe"}}',
    b'{"type": "hash", "payload": {"data": "\xed\xa0\x80"}}',  # an encoded surrogate is no UTF-8 either
])
def test_a_body_that_is_not_utf8_is_malformed_json(functions_stack: Stack, raw: bytes) -> None:
    before = task_counts(functions_stack)
    for call in (produce, supervise):
        status, reply = call(functions_stack, raw)
        assert status == 400, reply
        assert reply["error"]["code"] == "malformed_json" and "UTF-8" in reply["error"]["message"]
    assert task_counts(functions_stack) == before


def test_bodies_over_the_limits_get_413(functions_stack: Stack) -> None:
    # Over MAX_BODY_BYTES (1 MiB): the function refuses it, in the API's error shape.
    status, reply = produce(functions_stack, json.dumps(
        {"type": "hash", "payload": {"data": "x" * (2 << 20)}}).encode())
    assert status == 413 and reply["error"]["code"] == "body_too_large"
    # Over Lambda's 6 MB invocation payload: the URL refuses it before any function runs, in
    # Lambda's shape (docs/openapi.yaml, UrlTooLarge).
    status, reply = produce(functions_stack, b'{"data": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}')
    assert status == 413 and set(reply) == {"message"} and "6291456 bytes" in reply["message"]


def test_a_5000_digit_number_is_number_too_large(functions_stack: Stack) -> None:
    status, reply = produce(functions_stack, b'{"type": "primes", "payload": {"n": ' + b"7" * 5000 + b"}}")
    assert status == 400, reply
    assert reply["error"]["code"] == "number_too_large" and reply["error"]["details"]["max_digits"] == 100
    assert "sys." not in reply["error"]["message"]


def test_unknown_type_names_the_value_sent(functions_stack: Stack) -> None:
    status, reply = produce(functions_stack, b'{"type": 5}')
    assert status == 400
    assert reply["error"]["code"] == "unknown_type"
    assert reply["error"]["details"]["type"] == 5 and reply["error"]["details"]["got"] == "integer"


def test_integral_floats_are_integers_and_fractions_are_refused(functions_stack: Stack) -> None:
    task_id = f"floats-{uuid.uuid4().hex}"
    status, reply = produce(functions_stack, json.dumps(
        {"type": "primes", "payload": {"n": 10.0}, "complexity": 2.0, "task_id": task_id}).encode())
    assert status == 202, reply
    status, record = functions_stack.result(task_id)
    assert status == 200 and record["payload"] == {"n": 10} and record["complexity"] == 2

    status, reply = produce(functions_stack, b'{"type": "primes", "payload": {"n": 10.5}}')
    assert status == 400 and reply["error"]["code"] == "invalid_payload"
    assert reply["error"]["details"] == {"field": "n", "value": 10.5, "got": "number"}
    status, reply = produce(functions_stack, b'{"type": "primes", "payload": {"n": 10}, "complexity": 2.5}')
    assert status == 400 and reply["error"]["code"] == "invalid_complexity"


@pytest.mark.parametrize("path_id", ["a%20b", "a%2Fb", "x" * 129, "%C3%A9"])
def test_result_ids_follow_the_rule_of_submitted_ids(functions_stack: Stack, path_id: str) -> None:
    status, reply = functions_stack.get(f"results/{path_id}")
    assert status == 400, reply
    assert reply["error"]["code"] == "invalid_task_id"


def test_a_valid_id_nobody_submitted_is_still_404(functions_stack: Stack) -> None:
    status, reply = functions_stack.get(f"results/never-{uuid.uuid4().hex}")
    assert status == 404 and reply["error"]["code"] == "not_found"

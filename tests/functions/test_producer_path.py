"""The path of a submission through the real functions (localfaas running template.yaml): the
producer forwards the body, the supervisor validates it and assigns the ids, once; the producer
answers refusals exactly as the supervisor does, and logs the ids of what was admitted."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from taskcore.messages import DEADLINE_HEADER
from taskfaas.stack import Stack, eventually, http

JSON = {"Content-Type": "application/json"}


def post(stack: Stack, route: str, raw: bytes) -> tuple[int, Any]:
    if route == "supervise":
        url = stack.supervisor + route
        status, _, reply = http("POST", url, raw, stack.signer.headers("POST", url, raw, JSON))
    else:
        status, _, reply = http("POST", stack.producer + route, raw, JSON)
    return status, json.loads(reply)


def received_lines(stack: Stack) -> list[dict[str, Any]]:
    lines = stack.host.log("Producer").splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"event": "received"')]


@pytest.mark.parametrize("raw", [
    b'{"type": "primes", "payload": {"n": 10}, "complexity": 11}',
    b'{"tasks": [{"type": "sleep"}, {"type": "primes", "payload": {"n": -1}}]}',
    b'{"tasks": [{"type": "sleep", "task_id": null}]}',
    b'[1, 2]',
    b'{"type": "primes", "payload": {"n": 1',
])
def test_the_producer_refuses_what_the_supervisor_refuses_with_the_same_answer(
        functions_stack: Stack, raw: bytes) -> None:
    before = functions_stack.stats()["tasks"]
    produced, supervised = post(functions_stack, "produce", raw), post(functions_stack, "supervise", raw)
    assert produced[0] == 400 and produced == supervised
    assert functions_stack.stats()["tasks"] == before


def test_ids_are_assigned_once_and_logged_as_answered(functions_stack: Stack) -> None:
    mine = f"path-{uuid.uuid4().hex}"
    status, reply = post(functions_stack, "produce", json.dumps({"tasks": [
        {"type": "primes", "payload": {"n": 11}, "task_id": mine},
        {"type": "hash", "payload": {"data": uuid.uuid4().hex}}]}).encode())
    assert status == 202, reply
    answered = [task["task_id"] for task in reply["tasks"]]
    assert answered[0] == mine and uuid.UUID(answered[1])
    # The id the client got is the task's id in the store, and the one the producer logged.
    assert functions_stack.result(answered[1])[0] == 200
    line = eventually(lambda: next((entry for entry in received_lines(functions_stack)
                                    if entry["task_ids"] == answered), None), 10,
                      "the producer's received line with the answered ids")
    assert line["count"] == 2


def test_generate_submits_through_the_supervisor_which_assigns_the_ids(functions_stack: Stack) -> None:
    status, reply = post(functions_stack, "generate", json.dumps({"count": 3, "seed": 7}).encode())
    assert status == 202, reply
    task_ids = [task["task_id"] for task in reply["tasks"]]
    assert len(set(task_ids)) == 3 and all(uuid.UUID(task_id) for task_id in task_ids)
    assert all("worker_id" not in task and task["result_url"].endswith(task["task_id"])
               for task in reply["tasks"])
    records = [functions_stack.result(task_id) for task_id in task_ids]
    assert all(status == 200 for status, _ in records)


def test_a_submission_that_arrives_past_the_callers_deadline_is_refused_and_admits_nothing(
        functions_stack: Stack) -> None:
    """The producer sends the time it stops waiting (taskcore.messages.DEADLINE_HEADER); a
    submission that reaches the supervisor after it is a 400 deadline_passed that admits nothing,
    and a header that is not a deadline a 400 invalid_deadline."""
    task_id = f"late-{uuid.uuid4().hex[:12]}"
    raw = json.dumps({"type": "hash", "payload": {"data": task_id}, "task_id": task_id}).encode()
    url = functions_stack.supervisor + "supervise"
    for value, code in (("1000", "deadline_passed"), ("soon", "invalid_deadline")):  # 1000: 1970
        headers = {**JSON, DEADLINE_HEADER: value}
        status, _, reply = http("POST", url, raw, functions_stack.signer.headers("POST", url, raw, headers))
        assert status == 400, reply
        assert json.loads(reply)["error"]["code"] == code
        assert functions_stack.result(task_id)[0] == 404
    # Sent with a deadline still ahead, the same submission is admitted.
    ahead = {**JSON, DEADLINE_HEADER: str(int(time.time() * 1000) + 5000)}
    status, _, reply = http("POST", url, raw, functions_stack.signer.headers("POST", url, raw, ahead))
    assert status == 202, reply

"""api_errors: what each failure of a view answers, with a real (refused) Redis connection."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from chalice import Response

from taskcore.errors import Unavailable, ValidationError
from taskcore.http import api_errors

CLOSED_PORT_REDIS = "redis://127.0.0.1:1/0"


def body(response: Response) -> Any:
    # json_response hands Chalice the body already encoded, as the client will receive it.
    return json.loads(response.body)


def test_a_redis_failure_is_503_saying_the_task_store() -> None:
    @api_errors
    def view() -> Response:
        redis.Redis.from_url(CLOSED_PORT_REDIS, socket_connect_timeout=1).get("k")
        raise AssertionError("nothing listens on port 1")

    answer = view()
    assert answer.status_code == 503
    assert body(answer)["error"]["code"] == "unavailable"
    assert body(answer)["error"]["message"] == "the task store (Redis) is unavailable"


def test_bad_input_is_its_4xx_and_a_dependency_down_503() -> None:
    @api_errors
    def refused() -> Response:
        raise ValidationError("invalid_wait", "no", {"max": 20})

    @api_errors
    def down() -> Response:
        raise Unavailable("the supervisor is unreachable", {"reason": "x"})

    assert (refused().status_code, body(refused())["error"]["code"]) == (400, "invalid_wait")
    assert (down().status_code, body(down())["error"]["details"]) == (503, {"reason": "x"})


def test_any_other_error_is_not_taken_for_an_outage() -> None:
    @api_errors
    def broken() -> Response:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        broken()

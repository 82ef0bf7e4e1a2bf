"""The functions' answers when what they depend on is down, checked on the real apps with real
(refused) connections: a clear 503 from the producer, a failed invocation from the result
handler so that its batch is redelivered."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import redis
from chalice.test import Client

ROOT = Path(__file__).parents[2]
CLOSED = "127.0.0.1:1"  # nothing listens on port 1


def load_app(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(f"app_{name}", ROOT / "functions" / name / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_producer_answers_503_when_the_supervisor_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = load_app("producer", monkeypatch, SUPERVISOR_URL=f"http://{CLOSED}/", NAMESPACE="unused.")
    with Client(producer.app) as client:
        reply = client.http.post("/produce", headers={"Content-Type": "application/json"},
                                 body=json.dumps({"type": "primes", "payload": {"n": 10}}))
    assert reply.status_code == 503
    error = json.loads(reply.body)["error"]
    assert error["code"] == "unavailable" and "supervisor" in error["message"]


def test_result_handler_fails_the_batch_when_redis_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = load_app("result_handler", monkeypatch, REDIS_URL=f"redis://{CLOSED}/0", NAMESPACE="unused.",
                       REDIS_TIMEOUT="1")
    result = {"task_id": "t1", "fingerprint": "f" * 64, "status": "succeeded", "result": 1,
              "worker_id": "w", "started_at": 1, "finished_at": 2, "attempt": 1}
    event = {"eventSource": "aws:rmq", "rmqMessagesByQueue": {"results::/": [
        {"data": base64.b64encode(json.dumps(result).encode()).decode(), "redelivered": False,
         "basicProperties": {}}]}}
    started = time.monotonic()

    class Context:  # a Lambda context with 6 s left
        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return int((started + 6 - time.monotonic()) * 1000)

    with pytest.raises(redis.RedisError):  # the invocation fails; the mapping requeues the batch
        handler.handle_results(event, Context())
    # ... not at once (that would spend the queue's delivery limit in seconds), but once retrying
    # would run into the invocation's timeout (taskcore.results.MARGIN_MS before it).
    assert 1.5 < time.monotonic() - started < 6  # pauses 0.2 + 0.5 + 1.0 s, then 2 s would pass the margin

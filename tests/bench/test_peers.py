"""The benchmark's peers (bench/peers): each answers our HTTP contract with our results, and stop()
leaves no process, queue or Redis key behind. Celery, Dramatiq and gunicorn are dev dependencies;
RabbitMQ and Redis on 127.0.0.1, as for every other test."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from bench.peers import check, run


@pytest.fixture(scope="module", params=["celery", "dramatiq"])
def peer(request: pytest.FixtureRequest) -> Iterator[run.PeerHandle]:
    handle = run.start_peer(request.param, workers=2, unit_seconds=0.0, threads=4)
    yield handle
    handle.stop()


def _call(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_results_equal_ours(peer: run.PeerHandle) -> None:
    problems = asyncio.run(check.verify(peer.url, 40, concurrency=8))
    assert problems == []


def test_contract(peer: run.PeerHandle) -> None:
    status, reply = _call(peer.url + "/produce",
                          {"type": "sleep", "payload": {"seconds": 1}, "task_id": "t-1", "complexity": 3})
    assert (status, reply["task_id"], reply["status"]) == (202, "t-1", "queued")
    assert reply["result_url"] == f"{peer.url}/results/t-1"
    assert _call(reply["result_url"] + "?wait=0") == (200, {"task_id": "t-1", "status": "queued"})
    assert _call(reply["result_url"] + "?wait=5") == (
        200, {"task_id": "t-1", "status": "succeeded", "result": {"slept": 1}})

    status, reply = _call(peer.url + "/produce", {"tasks": [{"type": "fail", "payload": {"message": "no"}},
                                                            {"type": "primes", "payload": {"n": 10}}]})
    assert status == 202 and [item["status"] for item in reply["tasks"]] == ["queued", "queued"]
    records = [_call(item["result_url"] + "?wait=5")[1] for item in reply["tasks"]]
    assert [(r["status"], r.get("error"), r.get("result")) for r in records] == [
        ("failed", "no", None), ("succeeded", None, 4)]

    assert _call(peer.url + "/results/never-submitted?wait=1")[0] == 404
    assert _call(peer.url + "/results/t-1?wait=99")[0] == 400
    assert _call(peer.url + "/produce", {"type": "nope"})[1]["error"]["code"] == "unknown_type"
    assert _call(peer.url + "/produce", b"{")[1]["error"]["code"] == "malformed_json"
    assert _call(peer.url + "/produce", {"tasks": [{"type": "sleep"}] * 501})[1]["error"]["code"] == \
        "batch_too_large"


def test_stop_leaves_nothing(peer: run.PeerHandle) -> None:
    import pika
    import redis

    handle = run.start_peer(peer.name, workers=1, unit_seconds=0.0, threads=1)
    assert _call(handle.url + "/produce", {"type": "hash", "payload": {"data": "x"}})[0] == 202
    pids = handle.pids()
    handle.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert list(redis.Redis.from_url(handle.env.redis_url).scan_iter(match=handle.env.key_prefix + "*")) == []
    connection = pika.BlockingConnection(run._pika_parameters(handle.env.broker_url))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            connection.channel().queue_declare(handle.env.queue, passive=True)
    finally:
        connection.close()

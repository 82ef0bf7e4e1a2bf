"""The benchmark's peers (bench/peers): each answers our HTTP contract with our results, and stop()
leaves no process, queue or Redis key behind. Celery, Dramatiq and gunicorn are dev dependencies;
RabbitMQ and Redis on 127.0.0.1, as for every other test."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

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


def _produce_many(peer: run.PeerHandle, tasks: list[dict[str, Any]]) -> list[str]:
    tag = uuid4().hex[:8]  # the peer is module-scoped: ids fresh per test
    tasks = [{**task, "task_id": f"{tag}-{index}"} for index, task in enumerate(tasks)]
    status, reply = _call(peer.url + "/produce", {"tasks": tasks})
    assert status == 202, reply
    return [item["task_id"] for item in reply["tasks"]]


def test_many_results_as_one_by_one(peer: run.PeerHandle) -> None:
    ids = _produce_many(peer, [{"type": "primes", "payload": {"n": 10}},
                               {"type": "fail", "payload": {"message": "no"}},
                               {"type": "hash", "payload": {"data": "x"}}])
    singles = {task_id: _call(f"{peer.url}/results/{task_id}?wait=5")[1] for task_id in ids}
    assert all(record["status"] in ("succeeded", "failed") for record in singles.values()), singles

    # Asked order kept, a duplicate answered once, an unknown id in not_found; no wait: all are final.
    asked = [ids[2], "never-submitted", ids[0], ids[1], ids[2]]
    status, reply = _call(f"{peer.url}/results?ids={','.join(asked)}")
    assert status == 200, reply
    assert reply == {"results": [singles[ids[2]], singles[ids[0]], singles[ids[1]]],
                     "not_found": ["never-submitted"]}
    assert [(r["status"], r.get("error"), r.get("result")) for r in reply["results"]] == [
        ("succeeded", None, singles[ids[2]]["result"]), ("succeeded", None, 4), ("failed", "no", None)]


def test_many_results_wait(peer: run.PeerHandle) -> None:
    ids = _produce_many(peer, [{"type": "sleep", "payload": {"seconds": 1}}] * 3
                         + [{"type": "primes", "payload": {"n": 10}}])
    status, reply = _call(f"{peer.url}/results?ids={','.join(ids)}&wait=0")
    assert status == 200 and [r["status"] for r in reply["results"][:3]] == ["queued"] * 3, reply

    # Answers as soon as all are final, well before the wait is over.
    started = time.monotonic()
    status, reply = _call(f"{peer.url}/results?ids={','.join(ids)}&wait=10")
    elapsed = time.monotonic() - started
    assert status == 200 and reply["not_found"] == [], reply
    assert [r["task_id"] for r in reply["results"]] == ids
    assert [r["status"] for r in reply["results"]] == ["succeeded"] * 4, reply
    assert [r["result"] for r in reply["results"]] == [{"slept": 1}] * 3 + [4]
    assert elapsed < 5, elapsed

    # Or once the wait is over, with the records as they are (1.5 s: Dramatiq blocks 1 s, then polls).
    slow = _produce_many(peer, [{"type": "sleep", "payload": {"seconds": 4}}])
    started = time.monotonic()
    status, reply = _call(f"{peer.url}/results?ids={slow[0]},{ids[0]}&wait=1.5")
    elapsed = time.monotonic() - started
    assert status == 200 and [r["status"] for r in reply["results"]] == ["queued", "succeeded"], reply
    assert reply["results"][0] == {"task_id": slow[0], "status": "queued"}
    assert 1.4 < elapsed < 3, elapsed


def test_many_results_rejected(peer: run.PeerHandle) -> None:
    for query, code in [("ids=a%20b", "invalid_ids"), ("ids=a,,b", "invalid_ids"), ("ids=", "invalid_ids"),
                        ("wait=1", "invalid_ids"), ("ids=" + ",".join(["x"] * 101), "invalid_ids"),
                        ("ids=a&wait=21", "invalid_wait"), ("ids=a&wait=soon", "invalid_wait"),
                        ("ids=a&wait=-1", "invalid_wait")]:
        status, reply = _call(f"{peer.url}/results?{query}")
        assert (status, reply["error"]["code"]) == (400, code), query
    # The longest batch allowed: 100 ids of 128 characters, a 13 KB request line.
    longest = [f"{index:0128d}" for index in range(100)]
    status, reply = _call(f"{peer.url}/results?ids=" + ",".join(longest))
    assert status == 200 and reply == {"results": [], "not_found": longest}, status
    assert _call(f"{peer.url}/results?ids=a", {"ids": ["a"]})[0] == 405


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

"""End to end through the function URLs: producer -> supervisor -> fleet -> result handler."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from taskcore import work
from taskcore.messages import fingerprint
from taskcore.signing import Signer
from taskfaas.stack import (
    RABBITMQ_URL,
    REDIS_URL,
    ROOT,
    Stack,
    cleanup,
    http,
    new_namespace,
    stack_credentials,
    start_host,
)


def expected_result(task: dict) -> object:
    payload = task["payload"]
    if task["type"] == "primes":
        return work.primes(payload["n"])
    if task["type"] == "hash":
        return work.hash_rounds(payload["data"], payload.get("rounds", 1))
    return {"slept": payload.get("seconds", 0)}


def mixed_tasks(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    marker = uuid.uuid4().hex  # distinct from other runs, so nothing comes from an old cache
    tasks = []
    for i in range(count):
        kind = ["primes", "hash", "sleep", "fail"][i % 4]
        payload = {"primes": {"n": rng.randrange(100, 50_000)},
                   "hash": {"data": f"{marker}-{i}", "rounds": rng.randrange(1, 50)},
                   "sleep": {"seconds": 0},
                   "fail": {"message": f"planned failure {marker}-{i}"}}[kind]
        if kind == "sleep":
            payload = {"seconds": 0}
        tasks.append({"type": kind, "payload": payload, "complexity": rng.randint(1, 10),
                      "task_id": f"mixed-{marker}-{i}"})
    return tasks


def test_template_passes_cfn_lint() -> None:
    lint = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), "template.yaml"],
                          cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_one_hundred_mixed_tasks(stack: Stack) -> None:
    tasks = mixed_tasks(100, seed=7)
    status, reply = stack.produce({"tasks": tasks})
    assert status == 202, reply
    assert [item["task_id"] for item in reply["tasks"]] == [t["task_id"] for t in tasks]
    assert all(item["result_url"].startswith(stack.supervisor) for item in reply["tasks"])
    with ThreadPoolExecutor(16) as pool:
        records = list(pool.map(lambda t: stack.wait_final(t["task_id"]), tasks))
    for task, record in zip(tasks, records, strict=True):
        if task["type"] == "fail":
            assert record["status"] == "failed", record
            assert task["payload"]["message"] in json.dumps(record["error"])
            assert int(record["attempt"]) == 3  # MAX_ATTEMPTS
        else:
            assert record["status"] == "succeeded", record
            assert record["result"] == expected_result(task), task


def test_many_results_in_one_request(stack: Stack) -> None:
    tasks = [t for t in mixed_tasks(12, seed=8) if t["type"] != "fail"]
    assert stack.produce({"tasks": tasks})[0] == 202
    ids = [t["task_id"] for t in tasks]
    asked = ",".join(["never-submitted", *ids])
    status, reply = stack.get(f"results?ids={asked}&wait=15")
    assert status == 200, reply
    assert reply["not_found"] == ["never-submitted"]
    assert [record["task_id"] for record in reply["results"]] == ids
    assert [record["result"] for record in reply["results"]] == [expected_result(t) for t in tasks]
    for query in ("ids=", "ids=a%20b", "ids=" + ",".join(["x"] * 101), "ids=a&wait=21"):
        status, reply = stack.get(f"results?{query}")
        assert status == 400 and reply["error"]["code"] in ("invalid_ids", "invalid_wait"), reply


def test_identical_tasks_are_computed_once(stack: Stack) -> None:
    task = {"type": "hash", "payload": {"data": f"same-{uuid.uuid4().hex}", "rounds": 3}, "complexity": 5}
    with ThreadPoolExecutor(25) as pool:
        replies = list(pool.map(lambda _: stack.produce(task), range(50)))
    assert all(status == 202 for status, _ in replies), replies
    records = [stack.wait_final(reply["task_id"]) for _, reply in replies]
    expected = work.hash_rounds(task["payload"]["data"], 3)
    assert all(r["status"] == "succeeded" and r["result"] == expected for r in records)
    outcomes = Counter(reply["cache"] for _, reply in replies)
    assert outcomes["miss"] == 1 and outcomes["hit"] + outcomes["coalesced"] == 49, outcomes
    # Submitted again now, it is a hit whose answer carries the result: no GET needed.
    status, again = stack.produce(task)
    assert (status, again["cache"], again["status"], again["result"]) == (202, "hit", "succeeded", expected)
    ran = [e for e in stack.executions() if e["fingerprint"] == fingerprint("hash", task["payload"])]
    assert len(ran) == 1, ran
    # cache: false computes again, even though the result is cached
    status, bypass = stack.produce({**task, "cache": False})
    assert status == 202 and bypass["cache"] == "bypass"
    assert stack.wait_final(bypass["task_id"])["result"] == expected
    ran = [e for e in stack.executions() if e["fingerprint"] == fingerprint("hash", task["payload"])]
    assert len(ran) == 2


def test_repeated_task_id_returns_the_existing_task(stack: Stack) -> None:
    task_id = f"idem-{uuid.uuid4().hex}"
    task = {"type": "primes", "payload": {"n": 1234}, "task_id": task_id}
    assert stack.produce(task)[0] == 202
    stack.wait_final(task_id)
    before = len(stack.executions())
    status, reply = stack.produce({**task, "payload": {"n": 99}})
    assert status == 200 and reply["task_id"] == task_id and reply["existing"] is True
    assert reply["status"] == "succeeded"
    assert stack.result(task_id)[1]["result"] == work.primes(1234)
    assert len(stack.executions()) == before


def test_round_robin_over_live_workers(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    tasks = [{"type": "hash", "payload": {"data": f"rr-{marker}-{i}"}} for i in range(40)]
    status, reply = stack.produce({"tasks": tasks})
    assert status == 202
    records = [stack.wait_final(item["task_id"]) for item in reply["tasks"]]
    # The round-robin's pick: the worker that ran the task, or the one it was stolen from by an
    # idle worker (docs/worker_fleet.md, "Work stealing").
    picked = Counter(record.get("stolen_from") or record["worker_id"] for record in records)
    assert sorted(picked.values()) == [10, 10, 10, 10], picked


def test_bad_input_is_refused_and_changes_nothing(stack: Stack) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    before = len(list(client.scan_iter(match=f"{stack.namespace}task:*", count=1000)))
    def task(**fields: object) -> bytes:
        return json.dumps({"type": "primes", "payload": {"n": 5}, **fields}).encode()

    cases = [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (json.dumps({"type": "nope"}).encode(), "unknown_type"),
        (task(complexity=11), "invalid_complexity"),
        (task(payload={"n": "five"}), "invalid_payload"),
        (task(task_id="x" * 129), "invalid_task_id"),
        (task(task_id="bad id!"), "invalid_task_id"),
        (json.dumps({"type": "hash", "payload": {"data": "x" * (2 << 20)}}).encode(), "body_too_large"),
        (json.dumps({"tasks": [{"type": "primes", "payload": {"n": 5}}] * 501}).encode(), "batch_too_large"),
    ]
    for body, code in cases:
        status, _, reply = http("POST", stack.producer + "produce", body,
                                {"Content-Type": "application/json"})
        assert 400 <= status < 500, (code, status, reply)
        assert json.loads(reply)["error"]["code"] == code
    after = len(list(client.scan_iter(match=f"{stack.namespace}task:*", count=1000)))
    assert after == before


def test_supervisor_takes_signed_calls_only(stack: Stack) -> None:
    body = json.dumps({"type": "hash", "payload": {"data": f"unsigned-{uuid.uuid4().hex}"}}).encode()
    wrong = Signer(stack.signer.access_key, "not-the-secret", "us-east-1")
    url = stack.supervisor + "supervise"
    for headers in ({"Content-Type": "application/json"},  # unsigned
                    wrong.headers("POST", url, body, {"Content-Type": "application/json"})):
        status, reply_headers, raw = http("POST", url, body, headers)
        assert status == 403 and reply_headers["x-amzn-ErrorType"] == "AccessDeniedException", raw
    status, _, raw = http("GET", stack.supervisor + "stats")
    assert status == 403, raw
    # Nothing of the refused submission was kept, and the producer's signed calls go through.
    fp = fingerprint("hash", json.loads(body)["payload"])
    assert not redis.Redis.from_url(REDIS_URL).exists(f"{stack.namespace}inflight:{fp}")
    status, reply = stack.produce(json.loads(body))
    assert status == 202 and stack.wait_final(reply["task_id"])["status"] == "succeeded"


def test_producer_without_credentials_answers_503(tmp_path: Path) -> None:
    """A producer whose calls the supervisor refuses (here it has no credentials to sign with) says
    so: 503, not the supervisor's 403."""
    host = start_host(ROOT / "template.yaml", tmp_path / "localfaas",
                      overrides={"Namespace": f"e2e{uuid.uuid4().hex[:8]}.", "RedisUrl": REDIS_URL,
                                 "RabbitmqUrl": RABBITMQ_URL})
    try:
        status, _, reply = http("POST", host.urls["Producer"] + "produce",
                                json.dumps({"type": "primes", "payload": {"n": 10}}).encode(),
                                {"Content-Type": "application/json"})
        assert status == 503, reply
        assert "credentials" in json.loads(reply)["error"]["message"]
    finally:
        host.stop()


def test_rabbitmq_unreachable_answers_503_and_leaves_nothing(tmp_path: Path) -> None:
    namespace = new_namespace("e2e")
    env_file, _ = stack_credentials(tmp_path)
    host = start_host(ROOT / "template.yaml", tmp_path / "localfaas",
                      overrides={"Namespace": namespace, "RabbitmqUrl": "amqp://guest:guest@127.0.0.1:1/%2F",
                                 "RedisUrl": REDIS_URL}, extra_args=["--env-file", str(env_file)])
    try:
        status, _, reply = http("POST", host.urls["Producer"] + "produce",
                                json.dumps({"type": "primes", "payload": {"n": 10}}).encode(),
                                {"Content-Type": "application/json"})
        assert status == 503, reply
        assert json.loads(reply)["error"]["code"] == "unavailable"
        client = redis.Redis.from_url(REDIS_URL)
        left = [k for k in client.scan_iter(match=f"{namespace}*") if b"task:" in k or b"inflight:" in k]
        assert left == []
    finally:
        host.stop()
        cleanup(namespace)

"""Workers and tasks over their whole life, end to end: heartbeats that stop, workers killed or
stopped mid-task, long tasks under a short broker heartbeat, TTLs, long-polls.

Every test drives the real system (localfaas on template.yaml, the worker fleet, RabbitMQ, Redis)
through the function URLs; each stack runs in a namespace of its own, removed afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import redis

from taskcore import work
from taskcore.keys import Keys
from taskcore.messages import fingerprint
from taskfaas.stack import RABBITMQ_URL, REDIS_URL, Stack, eventually, start_stack, stop_stack

FINAL = ("succeeded", "failed")
# Short lives for the stack shared by the tests below that need them (fleet and functions alike).
RESULT_TTL = 5
CACHE_TTL = 3
BROKER_HEARTBEAT = 2


def worker_entry(stack: Stack, worker_id: str) -> dict[str, Any] | None:
    report = stack.workers()
    return next((w for w in report["workers"] + report["dead"] if w["worker_id"] == worker_id), None)


def records(stack: Stack, task_ids: list[str]) -> list[dict[str, Any]]:
    return [stack.result(task_id)[1] for task_id in task_ids]


def sleep_task(seconds: float, **fields: Any) -> dict[str, Any]:
    return {"type": "sleep", "payload": {"seconds": seconds}, "complexity": 1, **fields}


def unique_seconds(base: float) -> float:
    """A sleep length no other task of the run has, so its fingerprint is its own."""
    return round(base + uuid.uuid4().int % 10_000 / 1_000_000, 6)


def queue_depth(queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOPs a process (its heartbeat and its consumption freeze, its connection stays open);
    SIGCONT on the way out, whatever happened."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


# 1. A worker whose heartbeat stopped ------------------------------------------------------------------

def test_stopped_worker_is_no_longer_chosen_and_its_queue_is_moved(tmp_path: Path) -> None:
    # WORKER_TTL 3 s for the supervisor, the janitor (every second: --minute-seconds 1) and the fleet;
    # the live worker beats every second so that it never looks dead on a busy machine. Without work
    # stealing: what waits in the victim's queue is the janitor's to move (a worker with slots free
    # would take it first: tests/worker_fleet/test_stealing.py).
    stack = start_stack(tmp_path, workers=2, extra_env={"WORKER_TTL": "3", "WorkerTtl": "3",
                                                         "HEARTBEAT_SECONDS": "1", "WORK_STEALING": "off"})
    try:
        live_ids = sorted(w["worker_id"] for w in stack.workers()["workers"])
        victim, survivor = live_ids
        # Freeze it right after a heartbeat, so it stays "live" long enough to be given tasks.
        eventually(lambda: (w := worker_entry(stack, victim)) and w["heartbeat_age"] < 0.4, 10,
                   "a fresh heartbeat of the victim", pause=0.02)
        pid = worker_entry(stack, victim)["pid"]  # type: ignore[index]
        marker = uuid.uuid4().hex
        with frozen(pid):
            frozen_at = time.monotonic()
            first = [{"type": "hash", "payload": {"data": f"before-{marker}-{i}"}} for i in range(12)]
            status, reply = stack.produce({"tasks": first})
            assert status == 202, reply
            assert time.monotonic() - frozen_at < 2.5, "too slow to test: the victim's heartbeat expired"
            # Where admission sent each task (the producer's reply does not say; the record does).
            assigned = {r["task_id"]: stack.result(r["task_id"])[1]["worker_id"] for r in reply["tasks"]}
            on_victim = [task_id for task_id, worker in assigned.items() if worker == victim]
            assert len(on_victim) == 6, assigned  # round-robin over the two workers still counted live
            others = [task_id for task_id, worker in assigned.items() if worker == survivor]

            # Its heartbeat is now older than WORKER_TTL: GET /workers lists it among the dead ...
            eventually(lambda: victim in [w["worker_id"] for w in stack.workers()["dead"]], 8,
                       "the stopped worker reported dead")
            # ... and no new task is given to it.
            second = [{"type": "hash", "payload": {"data": f"after-{marker}-{i}"}} for i in range(8)]
            status, reply = stack.produce({"tasks": second})
            assert status == 202, reply
            later = [r["task_id"] for r in reply["tasks"]]
            assert {r["worker_id"] for r in records(stack, later)} == {survivor}
            for record in [stack.wait_final(task_id, timeout=30) for task_id in others + later]:
                assert record["status"] == "succeeded" and record["worker_id"] == survivor, record

            # The janitor moves what waits in the victim's queue to the live worker, which runs it.
            # Up to `concurrency` (2) messages were already pushed to the frozen process before it
            # could run them; those are held by its open connection and cannot be moved.
            def moved_and_finished() -> list[dict[str, Any]]:
                done = [r for r in records(stack, on_victim) if r["status"] in FINAL]
                return done if len(done) >= len(on_victim) - 2 else []

            done = eventually(moved_and_finished, 20, "the victim's queued tasks moved and finished")
            for record in done:
                assert record["status"] == "succeeded" and record["worker_id"] == survivor, record
                assert record["result"] == work.hash_rounds(record["payload"]["data"], 1)
            # The janitor's report says so (its log is written out twice a second).
            stack.host.wait_for_log("Janitor", f"'moved': {{'{victim}': {{'{survivor}': ")
            assert all(e["worker_id"] == survivor for e in stack.executions()), "the frozen worker ran"
        # SIGCONT: the worker comes back and finishes the tasks it was holding; nothing was lost.
        for record in [stack.wait_final(task_id, timeout=30) for task_id in on_victim]:
            assert record["status"] == "succeeded", record
            assert record["result"] == work.hash_rounds(record["payload"]["data"], 1)
        ran = [e["task_id"] for e in stack.executions()]
        assert sorted(ran) == sorted(set(ran)) and len(ran) == len(first) + len(second), "a task ran twice"
        eventually(lambda: victim in [w["worker_id"] for w in stack.workers()["workers"]], 8,
                   "the resumed worker live again")
        # It is chosen again; its queue was unbound by the janitor, so what is admitted for it goes
        # to the shared queue, and finishes like the rest.
        status, reply = stack.produce({"tasks": [{"type": "primes", "payload": {"n": 1000 + i}}
                                                 for i in range(4)]})
        assert status == 202, reply
        back = [stack.wait_final(r["task_id"], timeout=30) for r in reply["tasks"]]
        assert [r["result"] for r in back] == [work.primes(1000 + i) for i in range(4)], back
    finally:
        stop_stack(stack)


# A stack with short TTLs and a short broker heartbeat for the fleet ------------------------------------

@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    heartbeat_url = f"{RABBITMQ_URL}?heartbeat={BROKER_HEARTBEAT}"
    running = start_stack(tmp_path_factory.mktemp("short_lived"), workers=2, extra_env={
        "RABBITMQ_URL": heartbeat_url,  # the fleet's connections only (the functions keep theirs)
        "RESULT_TTL": str(RESULT_TTL), "ResultTtl": str(RESULT_TTL),
        "CACHE_TTL": str(CACHE_TTL), "CacheTtl": str(CACHE_TTL)})
    yield running
    stop_stack(running)


def wait_running(stack: Stack, task_id: str, timeout: float = 15) -> dict[str, Any]:
    return eventually(lambda: (r := stack.result(task_id)[1]).get("status") == "running" and r, timeout,
                      f"task {task_id} running", pause=0.05)


# 2. SIGKILL mid-task -------------------------------------------------------------------------------

def test_worker_killed_mid_task_the_task_is_redelivered_and_stored_once(short_lived: Stack) -> None:
    stack = short_lived
    client = redis.Redis.from_url(REDIS_URL)
    keys = Keys(stack.namespace)
    seconds = unique_seconds(2.5)
    marker = uuid.uuid4().hex
    leader_id, follower_id = f"kill-lead-{marker}", f"kill-follow-{marker}"
    fp = fingerprint("sleep", {"seconds": seconds})
    succeeded_before = stack.stats()["tasks"]["succeeded"]
    assert stack.produce(sleep_task(seconds, task_id=leader_id))[1]["cache"] == "miss"
    assert stack.produce(sleep_task(seconds, task_id=follower_id))[1]["cache"] == "coalesced"

    running = wait_running(stack, leader_id)
    worker_id = running["worker_id"]
    victim = worker_entry(stack, worker_id)
    assert victim is not None
    # The attempt really started in that process, and has not ended.
    started = [e for e in stack.fleet_events("started") if e["task_id"] == leader_id]
    assert [e["pid"] for e in started] == [victim["pid"]], started
    os.kill(victim["pid"], signal.SIGKILL)

    leader, follower = stack.wait_final(leader_id, timeout=30), stack.wait_final(follower_id, timeout=30)
    assert leader["status"] == "succeeded" and leader["result"] == {"slept": seconds}, leader
    assert follower["status"] == "succeeded" and follower["result"] == leader["result"], follower
    assert follower["cache"] == "coalesced"
    # Back in the killed worker's queue: run by the slot's restarted process (same worker id: the
    # queue is its own), or taken from that queue by the other worker, idle meanwhile.
    assert leader["worker_id"] == worker_id or leader.get("stolen_from") == worker_id, leader
    restarted = eventually(lambda: (w := worker_entry(stack, worker_id)) and w["pid"] != victim["pid"] and w,
                           10, "the slot restarted")
    assert restarted["worker_id"] in [w["worker_id"] for w in stack.workers()["workers"]]
    # A crash does not use up an attempt, and the record is whole and consistent.
    assert leader["attempt"] == 1, leader
    assert leader["cache"] == "miss" and leader["fingerprint"] == fp
    assert leader["submitted_at"] <= leader["started_at"] <= leader["finished_at"], leader
    # What ran: the killed attempt never ended (no `executed` line); the redelivery ran it once more.
    ran = [e for e in stack.executions() if e["fingerprint"] == fp]
    assert 1 <= len(ran) <= 2 and all(e["status"] == "succeeded" for e in ran), ran
    assert victim["pid"] not in [e["pid"] for e in ran]
    # Stored once: counted final once each, cached, the fingerprint freed, nothing dead-lettered.
    stats = stack.stats()
    assert stats["tasks"]["succeeded"] == succeeded_before + 2, stats
    assert json.loads(client.get(keys.result(fp)) or b"null") == {"slept": seconds}
    assert not client.exists(keys.inflight(fp)) and not client.exists(keys.followers(fp))
    dead_letters = [stats["queues"][keys.tasks_dead_queue], stats["queues"][keys.results_dead_queue]]
    assert dead_letters == [0, 0], stats
    eventually(lambda: stack.stats()["queues"][keys.results_queue] == 0, 10, "the results queue drained")
    assert stack.result(leader_id)[1] == leader  # nothing changed it afterwards


# 4. A task longer than the broker heartbeat ---------------------------------------------------------

def worker_connection_heartbeats(namespace: str) -> list[int]:
    """The heartbeat (timeout) RabbitMQ negotiated with each worker connection of the namespace."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "client_properties", "timeout",
                             "--formatter", "json"], capture_output=True, text=True, check=True)
    found = []
    for connection in json.loads(listed.stdout):
        properties = {p[0]: p[2] for p in connection["client_properties"]}
        if str(properties.get("connection_name", "")).startswith(f"worker {namespace}"):
            found.append(connection["timeout"])
    return found


def test_task_longer_than_the_broker_heartbeat_completes(short_lived: Stack) -> None:
    stack = short_lived
    assert worker_connection_heartbeats(stack.namespace) == [BROKER_HEARTBEAT] * 2
    seconds = unique_seconds(6)  # three heartbeat intervals: a blocked connection would be closed
    task_id = f"long-{uuid.uuid4().hex}"
    lost_before = len(stack.fleet_events("broker_lost")) + len(stack.fleet_events("reconnecting"))
    connected_before = len(stack.fleet_events("connected"))
    assert stack.produce(sleep_task(seconds, task_id=task_id))[0] == 202
    record = stack.wait_final(task_id, timeout=40)
    assert record["status"] == "succeeded" and record["result"] == {"slept": seconds}, record
    assert record["attempt"] == 1
    assert record["finished_at"] - record["started_at"] >= seconds * 1000
    ran = [e for e in stack.executions() if e["task_id"] == task_id]
    assert len(ran) == 1, ran
    # The connection stayed up all along: no loss, no reconnect, no new connection.
    assert len(stack.fleet_events("broker_lost")) + len(stack.fleet_events("reconnecting")) == lost_before
    assert len(stack.fleet_events("connected")) == connected_before
    assert worker_connection_heartbeats(stack.namespace) == [BROKER_HEARTBEAT] * 2


# 5. TTLs and long-polls ------------------------------------------------------------------------------

def test_results_and_cache_entries_expire(short_lived: Stack) -> None:
    stack = short_lived
    client = redis.Redis.from_url(REDIS_URL)
    keys = Keys(stack.namespace)
    payload = {"data": f"ttl-{uuid.uuid4().hex}", "rounds": 1}  # as normalised, for its fingerprint
    fp = fingerprint("hash", payload)
    task = {"type": "hash", "payload": payload}
    status, first = stack.produce(task)
    assert status == 202 and first["cache"] == "miss"
    record = stack.wait_final(first["task_id"])
    assert record["status"] == "succeeded"
    assert 0 < client.pttl(keys.task(first["task_id"])) <= RESULT_TTL * 1000
    assert 0 < client.pttl(keys.result(fp)) <= CACHE_TTL * 1000
    # While the cache entry lives, the same work is a hit.
    status, hit = stack.produce(task)
    assert status == 202 and hit["cache"] == "hit" and hit["status"] == "succeeded", hit
    assert 0 < client.pttl(keys.task(hit["task_id"])) <= RESULT_TTL * 1000

    eventually(lambda: not client.exists(keys.result(fp)), CACHE_TTL + 3, "the cache entry expired")
    # Expired: computed again.
    status, again = stack.produce(task)
    assert status == 202 and again["cache"] == "miss", again
    assert stack.wait_final(again["task_id"])["result"] == record["result"]
    assert len([e for e in stack.executions() if e["fingerprint"] == fp]) == 2

    eventually(lambda: not client.exists(keys.task(first["task_id"])), RESULT_TTL + 3, "the record expired")
    status, gone = stack.result(first["task_id"])
    assert status == 404 and gone["error"]["code"] == "not_found", gone


def test_long_poll_returns_as_soon_as_the_task_ends(short_lived: Stack) -> None:
    stack = short_lived
    seconds = unique_seconds(1)
    status, reply = stack.produce(sleep_task(seconds))
    assert status == 202 and reply["status"] == "queued", reply
    asked = time.monotonic()
    status, record = stack.result(reply["task_id"], wait=10)
    waited = time.monotonic() - asked
    assert status == 200 and record["status"] == "succeeded", record
    assert record["result"] == {"slept": seconds}
    assert waited < 5, f"the long-poll answered after {waited:.2f}s for a task of ~{seconds}s"
    # A wait on a final task answers at once.
    asked = time.monotonic()
    assert stack.result(reply["task_id"], wait=10)[1]["status"] == "succeeded"
    assert time.monotonic() - asked < 2


# 3. SIGTERM to the fleet during a task -----------------------------------------------------------------

def test_sigterm_to_the_fleet_finishes_the_tasks_in_hand_and_loses_nothing(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, workers=1)
    try:
        marker = uuid.uuid4().hex
        (worker_id,) = [w["worker_id"] for w in stack.workers()["workers"]]
        in_hand = [f"term-run-{marker}-{i}" for i in range(2)]
        queued = [f"term-wait-{marker}-{i}" for i in range(3)]
        tasks = [sleep_task(unique_seconds(2), task_id=task_id) for task_id in in_hand]
        tasks += [sleep_task(unique_seconds(0.2), task_id=task_id) for task_id in queued]
        status, reply = stack.produce({"tasks": tasks})
        assert status == 202, reply
        for task_id in in_hand:  # concurrency 2: both run, the other three wait in the queue
            wait_running(stack, task_id)

        stack.fleet.send_signal(signal.SIGTERM)
        assert stack.fleet.wait(timeout=40) == 0
        # The tasks in hand were finished and their results published before the workers exited
        # (the result handler stores them, with no worker left running) ...
        for task_id in in_hand:
            assert stack.wait_final(task_id, timeout=15)["status"] == "succeeded"
        # ... and the others are still queued, their messages back in the worker's queue.
        assert [r["status"] for r in records(stack, queued)] == ["queued"] * 3
        assert queue_depth(Keys(stack.namespace).worker_queue(worker_id)) == 3
        drained = [e for e in stack.fleet_events("draining") if e["worker_id"] == worker_id]
        assert drained and drained[-1]["in_hand"] == 2, drained
        assert not stack.fleet_events("grace_expired")

        # A new fleet takes them up: nothing was lost, nothing ran twice.
        stack.restart_fleet(workers=1)
        for task_id, task in zip(in_hand + queued, tasks, strict=True):
            record = stack.wait_final(task_id, timeout=30)
            assert record["status"] == "succeeded", record
            assert record["result"] == {"slept": task["payload"]["seconds"]}
        ran = [e["task_id"] for e in stack.executions()]
        assert sorted(ran) == sorted(in_hand + queued), ran
    finally:
        stop_stack(stack)

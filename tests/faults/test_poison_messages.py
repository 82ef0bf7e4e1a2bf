"""Breaks the messages: publishes to the private broker task messages no worker can run (not JSON, and
JSON of the wrong schema, to tasks.shared and to a worker's queue) and results messages the result
handler cannot use: one that is not JSON, and a valid result whose task record is corrupt (a
string where the hash should be), so that storing it fails every time.

Proves: the bad task messages are rejected at once and dead-lettered to tasks.dead; the result
handler dead-letters each poison result on its own to results.dead (the unreadable one and the
one that cannot be stored), without failing its batch, so the good results delivered with them
are stored; GET /stats shows both dead-letter depths; and a good task submitted after them
completes: nothing is blocked. And the delivery limit, on quorum and on classic work queues
(QUEUE_TYPE): a task that kills its worker on every delivery runs 1 + DELIVERY_LIMIT times, then
ends in tasks.dead (the broker's count, or the worker's) and the janitor fails it."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable

import pika
import pytest

from taskcore import keys as names
from taskcore.keys import Keys
from taskfaas.stack import eventually
from tests.faults.conftest import REPORT, Faults
from tests.faults.helpers import mapping_status, new_id, sleep_task, unique_seconds


def publish(url: str, exchange: str, routing_key: str, body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, routing_key, body,
                              pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
                              mandatory=True)
    finally:
        connection.close()


def test_poison_messages_are_dead_lettered_and_block_nothing(faults_factory: Callable[..., Faults]) -> None:
    faults = faults_factory(workers=1, concurrency=2)
    stack, rabbitmq = faults.stack, faults.rabbitmq
    keys = Keys(stack.namespace)
    (worker_id,) = [w["worker_id"] for w in stack.workers()["workers"]]

    # Task messages: not JSON, and JSON a worker must not run, to the shared queue and its own queue.
    bad_tasks = [b"not json {", json.dumps({"type": "primes", "payload": "not an object"}).encode()]
    for routing_key in (names.SHARED_ROUTING_KEY, names.worker_routing_key(worker_id)):
        for body in bad_tasks:
            publish(rabbitmq.url, keys.tasks_exchange, routing_key, body)
    eventually(lambda: stack.stats()["queues"][keys.tasks_dead_queue] == 4, 15,
               "4 task messages dead-lettered")
    rejected = stack.fleet_events("rejected")
    assert len(rejected) == 4, rejected  # each delivered once, rejected at once

    # A results message that is not JSON, and a valid result whose record is corrupt (COMPLETE fails
    # with WRONGTYPE however often it is tried): the handler dead-letters both on their own, and
    # fails no batch (tests/taskcore/test_results.py: the good results of such a batch are stored).
    poisoned = new_id("poison")
    faults.redis.client().set(keys.task(poisoned), "corrupt")
    result = {"task_id": poisoned, "fingerprint": "0" * 64, "status": "succeeded", "result": 1,
              "worker_id": worker_id, "started_at": 1, "finished_at": 2, "attempt": 1}
    failed_before = mapping_status(stack)["failed_batches"]
    publish(rabbitmq.url, keys.results_exchange, names.RESULTS_ROUTING_KEY, b"\x00 not a result")
    publish(rabbitmq.url, keys.results_exchange, names.RESULTS_ROUTING_KEY, json.dumps(result).encode())
    eventually(lambda: stack.stats()["queues"][keys.results_dead_queue] == 2, 30,
               "both poison results dead-lettered")
    failures = mapping_status(stack)["failed_batches"] - failed_before
    assert failures == 0, f"{failures} batches failed: a poison message must not fail its batch"
    stack.host.wait_for_log("ResultHandler", "poison result message dead-lettered", timeout=10)
    # Nothing is blocked: a good task submitted afterwards completes, and the queues are empty.
    good = sleep_task(unique_seconds(0.05), new_id("good"))
    status, reply = stack.produce(good)
    assert status == 202, reply
    record = stack.wait_final(good["task_id"], timeout=20)
    assert record["status"] == "succeeded" and record["result"] == {"slept": good["payload"]["seconds"]}
    # Polled: the janitor looks through tasks.dead every second (to fail dead-lettered tasks), and a
    # message it holds for that moment is not in the queue's count.
    queues = eventually(lambda: (q := stack.stats()["queues"])[keys.tasks_dead_queue] == 4 and q, 10,
                        "the 4 bad task messages still in tasks.dead")
    assert queues[keys.results_dead_queue] == 2, queues
    assert queues[keys.shared_queue] == 0 and queues[keys.results_queue] == 0, queues
    assert queues[keys.worker_queue(worker_id)] == 0, queues
    REPORT.append("poison: 4 bad task messages -> tasks.dead after 1 delivery each; 2 poison results "
                  "-> results.dead by the handler, no batch failed; good task after them: succeeded")


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_a_task_that_kills_its_worker_on_every_delivery_is_dead_lettered_after_the_limit(
        faults_factory: Callable[..., Faults], queue_type: str) -> None:
    """The delivery limit, both ways: a quorum queue counts returns itself (x-delivery-limit), a
    classic queue has no such count and the worker counts redeliveries in the task's record
    (scripts.MARK_RUNNING). Each time a worker starts the poison task it is SIGKILLed (the fleet
    restarts it, the broker delivers the message again); after 1 + DELIVERY_LIMIT starts the next
    delivery must end in tasks.dead, where the janitor fails the task, and the worker takes the
    next task as usual."""
    limit = 2
    faults = faults_factory(workers=1, concurrency=1,
                            extra_env={"QUEUE_TYPE": queue_type, "DELIVERY_LIMIT": str(limit)})
    stack = faults.stack
    keys = Keys(stack.namespace)
    # Long enough that it is always killed while running (the time limit is longer still).
    poison = sleep_task(unique_seconds(20.0), new_id("poison"))
    status, reply = stack.produce(poison)
    assert status == 202, reply
    killed: set[int] = set()

    def kill_each_start() -> bool:
        for event in stack.fleet_events("started"):
            if event["task_id"] == poison["task_id"] and event["pid"] not in killed:
                os.kill(event["pid"], signal.SIGKILL)
                killed.add(event["pid"])
        record = stack.result(poison["task_id"])[1]
        return record.get("status") == "failed"

    # The fleet restarts a worker that keeps dying after 0.5, 1, 2 s (+-20 %), then it reconnects.
    eventually(kill_each_start, 60, lambda: f"the poison task failed (killed {len(killed)} workers)",
               pause=0.1)
    record = stack.result(poison["task_id"])[1]
    assert record["error"].startswith("dead-lettered"), record
    starts = [e for e in stack.fleet_events("started") if e["task_id"] == poison["task_id"]]
    assert len(starts) == 1 + limit == len(killed), starts
    # Who dead-lettered it: the broker (quorum), or the worker, which logged it (classic).
    poisoned = [e for e in stack.fleet_events("poison") if e["task_id"] == poison["task_id"]]
    assert len(poisoned) == (1 if queue_type == "classic" else 0), poisoned
    assert "deliveries" not in record  # bookkeeping, not part of the record the API shows

    good = sleep_task(unique_seconds(0.05), new_id("good"))
    status, reply = stack.produce(good)
    assert status == 202, reply
    assert stack.wait_final(good["task_id"], timeout=30)["status"] == "succeeded"
    queues = stack.stats()["queues"]
    assert queues[keys.shared_queue] == 0 and queues[keys.tasks_dead_queue] == 0, queues
    REPORT.append(f"poison ({queue_type}): killed on each of {len(starts)} starts, then dead-lettered "
                  f"({'by the worker' if poisoned else 'by the broker'}) and failed by the janitor")

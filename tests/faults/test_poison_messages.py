"""Breaks the messages: publishes to the private broker task messages no worker can run (not JSON, and
JSON of the wrong schema, to tasks.shared and to a worker's queue) and results messages the result
handler cannot use: one that is not JSON, and a valid result whose task record is corrupt (a
string where the hash should be), so that storing it fails every time.

Proves: the bad task messages are rejected at once and dead-lettered to tasks.dead; the result
handler dead-letters each poison result on its own to results.dead (the unreadable one and the
one that cannot be stored), without failing its batch, so the good results delivered with them
are stored; GET /stats shows both dead-letter depths; and a good task submitted after them
completes: nothing is blocked."""

from __future__ import annotations

import json
from collections.abc import Callable

import pika

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

"""Breaks Redis: the private redis-server is frozen (SIGSTOP, see conftest) for 10 s while results are
flowing, then resumed.

Proves: while it is frozen the supervisor answers 503 (GET /results, GET /stats); the result
handler's invocation retries until Redis answers again (or, past its time, fails and localfaas
requeues its batch), so every result is stored: every task ends succeeded with its own result and
nothing is dead-lettered.

Also shows that a submission answered 503 during the freeze leaves nothing behind: its ADMIT script
was already sent when the client timed out, and Redis runs it when it resumes, but the script sees
its deadline passed and admits nothing (this test found that bug)."""

from __future__ import annotations

import time
from collections.abc import Callable

from taskcore.keys import Keys
from taskcore.messages import fingerprint
from taskfaas.stack import eventually
from tests.faults.conftest import REPORT, Faults
from tests.faults.helpers import final_records, mapping_status, new_id, sleep_task, unique_seconds

PAUSE_SECONDS = 10  # above the task store's 7 s socket timeout, below WORKER_TTL (10 s) + a beat


def test_redis_frozen_while_results_flow(faults_factory: Callable[..., Faults]) -> None:
    faults = faults_factory(workers=2, concurrency=2)
    stack, store = faults.stack, faults.redis
    tasks = [sleep_task(unique_seconds(0.2, 0.2), new_id("redis")) for _ in range(60)]
    status, reply = stack.produce({"tasks": tasks})
    assert status == 202, reply
    ids = [task["task_id"] for task in tasks]
    seconds = {task["task_id"]: task["payload"]["seconds"] for task in tasks}
    # 60 tasks of 0.25-0.45 s on 4 slots: about 5 s of work. Freeze Redis once results are flowing.
    eventually(lambda: stack.stats()["tasks"]["succeeded"] >= 5, 20, "first results stored")
    before = stack.stats()["tasks"]["succeeded"]
    failed_before = mapping_status(stack)["failed_batches"]
    with store.frozen():
        frozen_at = time.monotonic()
        status, answer = stack.result(ids[-1])
        assert status == 503 and answer["error"]["code"] == "unavailable", (status, answer)
        status, answer = stack.get("stats")
        assert status == 503, (status, answer)
        # Results keep being published meanwhile; the result handler's invocation waits for Redis
        # (taskcore.results retries within its time), or fails and its batch is requeued.
        time.sleep(max(0.0, PAUSE_SECONDS - (time.monotonic() - frozen_at)))
    records = final_records(stack, ids, timeout=45)
    wrong = [r for r in records.values()
             if r["status"] != "succeeded" or r["result"] != {"slept": seconds[r["task_id"]]}]
    assert not wrong, wrong[:5]
    mapping = mapping_status(stack)
    keys = Keys(stack.namespace)
    stats = eventually(lambda: (s := stack.stats())["queues"][keys.results_queue] == 0 and s, 15,
                       "the results queue drained")
    assert stats["queues"][keys.results_dead_queue] == 0 and stats["queues"][keys.tasks_dead_queue] == 0
    assert stats["tasks"]["succeeded"] == len(ids), stats["tasks"]
    assert stats["tasks"]["queued"] == 0 and stats["tasks"]["running"] == 0, stats["tasks"]
    REPORT.append(f"redis freeze: {len(ids) - before} of {len(ids)} tasks not yet stored when Redis froze "
                  f"for {PAUSE_SECONDS}s; {mapping['failed_batches'] - failed_before} result batches failed, "
                  f"{mapping['requeued']} result messages requeued; lost: 0")


def test_submission_answered_503_while_redis_is_frozen_leaves_nothing(
        faults_factory: Callable[..., Faults]) -> None:
    faults = faults_factory(workers=1, concurrency=2)
    stack, store = faults.stack, faults.redis
    # A warm supervisor environment, whose Redis connection is open (a fresh connection would time
    # out in its handshake, before the script is even sent).
    warm = sleep_task(unique_seconds(0.1), new_id("warm"))
    assert stack.produce(warm)[0] == 202
    assert stack.wait_final(warm["task_id"], timeout=15)["status"] == "succeeded"
    task = sleep_task(unique_seconds(0.1), new_id("frozen"))
    with store.frozen():
        status, answer = stack.produce(task)
    assert status == 503, (status, answer)
    client = store.client()
    keys = Keys(stack.namespace)
    time.sleep(1)  # whatever Redis still had to run has run
    leftover = stack.result(task["task_id"])
    claim = client.get(keys.inflight(fingerprint("sleep", task["payload"])))
    # The same work, submitted again under a new id, must run and end.
    again = sleep_task(task["payload"]["seconds"], new_id("again"))
    status, answer = stack.produce(again)
    assert status == 202, answer
    REPORT.append(f"503 during the Redis freeze: afterwards GET /results -> {leftover[0]} "
                  f"{leftover[1].get('status')}, inflight claim {claim!r}; same work resubmitted: "
                  f"cache {answer.get('cache')}")
    assert leftover[0] == 404 and claim is None, (leftover, claim)
    assert stack.wait_final(again["task_id"], timeout=15)["status"] == "succeeded"

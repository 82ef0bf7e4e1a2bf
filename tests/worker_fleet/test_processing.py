"""The fleet processing tasks: results, heartbeats, dead letters, retries, time limits."""

from __future__ import annotations

import json
import time

from taskcore import registry
from taskcore.store import now_ms
from taskfaas.stack import eventually
from tests.worker_fleet.conftest import Env


def test_tasks_produce_correct_results_and_heartbeats(env: Env) -> None:
    fleet = env.start(workers=2, concurrency=2)
    tasks = [
        *env.submit("w-0", {"type": "primes", "payload": {"n": 10_000}, "complexity": 2},
                    {"type": "hash", "payload": {"data": "abc", "rounds": 5}},
                    {"type": "sleep", "payload": {"seconds": 0.1}}),
        *env.submit("w-1", {"type": "primes", "payload": {"n": 1}},
                    {"type": "hash", "payload": {"data": "héllo"}, "complexity": 3}),
        *env.submit("shared", {"type": "primes", "payload": {"n": 100_000}},
                    {"type": "hash", "payload": {"data": "", "rounds": 1000}}),
    ]
    results = {r.task_id: r for r in env.results(len(tasks))}
    assert set(results) == {t.task_id for t in tasks}
    for task in tasks:
        result = results[task.task_id]
        assert result.status == "succeeded", result
        # The expected values come from taskcore's pure functions, computed here.
        assert result.result == registry.execute(task.type, task.payload)
        assert (result.fingerprint, result.attempt, result.error) == (task.fingerprint, 1, None)
        assert task.submitted_at <= result.started_at <= result.finished_at
    # Each ran on the worker it was sent to, or was stolen from that worker's queue by the other,
    # whose slot was idle (the third for w-0 waits behind its two slots): the log says which.
    stolen = {e["task_id"]: e["stolen_from"] for e in fleet.events("started") if "stolen_from" in e}
    for sent_to, sent in (("w-0", tasks[:3]), ("w-1", tasks[3:5])):
        for task in sent:
            ran_on = results[task.task_id].worker_id
            assert ran_on == sent_to or (ran_on != sent_to and stolen[task.task_id] == sent_to), task
    assert results[tasks[0].task_id].result == 1229
    # The record says it ran (the result handler, not running here, would make it final).
    record = env.store.get(tasks[3].task_id)
    assert record is not None
    assert (record["status"], record["worker_id"], record["attempt"]) == ("running", "w-1", 1)

    # Heartbeats: both workers live, with their self-report; `processed` counts executed attempts.
    assert env.store.live_workers(now_ms()) == ["w-0", "w-1"]
    spawned = {e["worker_id"]: e["pid"] for e in fleet.events("worker_spawned")}
    reports = {}
    for worker_id in ("w-0", "w-1"):
        report = eventually(lambda w=worker_id: (r := _report(env, w)).get("in_flight") == "0" and r, 5,
                            f"{worker_id} reporting in_flight 0")
        fields = {"host", "pid", "started_at", "concurrency", "in_flight", "processed", "heartbeat_at"}
        assert fields <= set(report)
        assert (int(report["pid"]), report["concurrency"]) == (spawned[worker_id], "2")
        reports[worker_id] = report
    # Counted by the heartbeats (at most one interval late), once per attempt.
    eventually(lambda: sum(int(_report(env, w)["processed"]) for w in ("w-0", "w-1")) == len(tasks), 5,
               "processed adding up to the tasks")
    executed = fleet.events("executed")
    assert sorted(e["task_id"] for e in executed) == sorted(t.task_id for t in tasks)
    # ...and the heartbeat keeps beating.
    first = int(reports["w-0"]["heartbeat_at"])
    eventually(lambda: int(_report(env, "w-0")["heartbeat_at"]) > first, 3, "a newer heartbeat")


def test_unparseable_and_invalid_messages_are_dead_lettered_not_redelivered(env: Env) -> None:
    fleet = env.start(workers=1, concurrency=1)
    good_fields = {"type": "hash", "payload": {"data": "x"}, "complexity": 1, "task_id": "bad",
                   "cache": True, "fingerprint": "f", "submitted_at": 1, "attempt": 0}
    bad = [b"not json at all", b"[1, 2, 3]", b"\xff\xfe",
           json.dumps({**good_fields, "type": "nope"}).encode(),
           json.dumps({**good_fields, "complexity": 99}).encode(),
           json.dumps({**good_fields, "payload": {"data": 5}}).encode(),
           json.dumps({k: v for k, v in good_fields.items() if k != "fingerprint"}).encode()]
    for body in bad:
        env.publish_raw("w-0", body)
    good, = env.submit("w-0", {"type": "hash", "payload": {"data": "after the bad ones"}})
    [result] = env.results(1)
    assert (result.task_id, result.status) == (good.task_id, "succeeded")

    dead: list = []
    eventually(lambda: dead.extend(env.get_all(env.keys.tasks_dead_queue)) or len(dead) >= len(bad), 5,
               "the bad messages in tasks.dead")
    assert sorted(delivery.body for delivery in dead) == sorted(bad)
    for delivery in dead:
        [death] = delivery.headers["x-death"]
        assert (death["reason"], death["queue"]) == ("rejected", env.keys.worker_queue("w-0"))
    time.sleep(0.5)  # long enough for a requeued message to come around again
    assert len(fleet.events("rejected")) == len(bad)
    assert env.depth(env.keys.worker_queue("w-0")) == 0
    assert not fleet.events("executed", task_id="bad")


def test_failing_task_is_retried_with_backoff_then_failed(env: Env) -> None:
    fleet = env.start(workers=1, concurrency=1)
    failing, = env.submit("w-0", {"type": "fail", "payload": {"message": "boom"}})
    behind, = env.submit("w-0", {"type": "hash", "payload": {"data": "behind"}, "complexity": 2})
    results = env.results(2)
    # With one slot, the task behind the failing one finished first: a retry waiting out its backoff
    # (in a delay queue) holds no worker slot.
    assert [r.task_id for r in results] == [behind.task_id, failing.task_id]
    failed = results[1]
    assert (failed.status, failed.error, failed.attempt) == ("failed", "boom", env.settings.max_attempts)
    assert failed.result is None

    attempts = fleet.events("executed", task_id=failing.task_id)
    assert [(e["attempt"], e["status"], e["error"]) for e in attempts] == [
        (n, "failed", "boom") for n in range(1, env.settings.max_attempts + 1)]
    # Backoff doubles from one task unit (floored at 0.1 s): 100 ms, then 200 ms.
    assert [e["delay_ms"] for e in fleet.events("retry_scheduled", task_id=failing.task_id)] == [100, 200]
    assert env.depth(env.keys.worker_queue("w-0")) == 0

    # What the result handler stores from this result shows the attempts and the error.
    env.store.complete([failed])
    record = env.store.get(failing.task_id)
    assert record is not None
    assert (record["status"], record["error"], record["attempt"]) == ("failed", "boom", 3)


def test_time_limit_fails_the_task_and_frees_the_slot(env: Env) -> None:
    fleet = env.start(workers=1, concurrency=1, TASK_TIME_LIMIT="0.5")
    slow, = env.submit("w-0", {"type": "sleep", "payload": {"seconds": 60}})
    quick, = env.submit("w-0", {"type": "primes", "payload": {"n": 100}})
    results = {r.task_id: r for r in env.results(2)}
    timed_out = results[slow.task_id]
    assert timed_out.status == "failed"
    assert timed_out.error is not None and "time limit exceeded" in timed_out.error, timed_out.error
    assert timed_out.attempt == 1  # a time limit is a verdict on the task, not retried
    assert 500 <= timed_out.finished_at - timed_out.started_at < 5000
    assert (results[quick.task_id].status, results[quick.task_id].result) == ("succeeded", 25)
    # The attempt's thread was told to stop and did; what it came back with was discarded.
    fleet.wait_event("late_outcome_discarded", task_id=slow.task_id, timeout=5)
    assert [e["status"] for e in fleet.events("executed", task_id=slow.task_id)] == ["cancelled"]
    assert not fleet.events("retry_scheduled")


def _report(env: Env, worker_id: str) -> dict[str, str]:
    raw = env.store.redis.hgetall(env.keys.worker(worker_id))
    return {k.decode(): v.decode() for k, v in raw.items()}

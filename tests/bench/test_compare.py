"""The benchmark's pure parts: its options, issue 4's table (bench/extras.py), the light workloads,
memory readings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from bench import compare, extras, memory, systems
from taskfaas.stack import REDIS_URL


@pytest.mark.parametrize("make", [extras.light_tasks, systems.light_tasks])
def test_light_tasks_are_distinct_valid_submissions(make: Callable[[int], list[dict[str, Any]]]) -> None:
    from taskcore.messages import validate_task

    tasks = make(50)
    assert len({t["payload"]["data"] for t in tasks}) == 50
    assert all(validate_task(t).type == "hash" for t in tasks)
    assert make(3)[0]["payload"]["data"] != tasks[0]["payload"]["data"]  # fresh per run
    assert systems.light_tasks(2)[1]["complexity"] == 1


def test_the_options_default_to_the_issue_s_counts() -> None:
    args, only = compare.parse([])
    assert (args.single, args.batched, args.clients, args.cold_tasks) == (3000, 6000, 24, 100)
    assert only == set(compare.ITEMS)
    quick, _ = compare.parse(["--quick", "--single", "50"])
    assert (quick.single, quick.batched) == (50, 600)
    _, some = compare.parse(["--only", "ours,celery"])
    assert some == {"ours", "celery"}
    with pytest.raises(SystemExit):
        compare.parse(["--only", "ours,rq"])


def test_the_runs_are_the_issue_s() -> None:
    assert systems.MODES == (("1 per request", 1, "one"), ("batches of 100", 100, "one"),
                             ("1 per request", 1, "ids"), ("batches of 100", 100, "ids"))


def test_other_items_table() -> None:
    rows = [{"system": "ours", "mode": "cache hit", "tasks": 300, "p50_ms": 1.5, "p99_ms": 3.0,
             "settings": "s"},
            {"system": "ours", "mode": "scaling, shared", "tasks": 400, "completed_per_s": 15.6,
             "makespan_s": 25.5, "ideal_s": 25.0, "over_ideal_pct": 2.0, "settings": "x"}]
    lines = extras.table(rows).splitlines()
    assert lines[2] == "| ours | cache hit | 300 | - | 1.5 | 3.0 | s |"
    assert lines[3].startswith("| ours | scaling, shared | 400 | 15.6 |")
    assert "makespan 25.5 s, ideal 25 s (+2.0 %)" in lines[3]


def test_memory_reads_a_process_tree() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(50 << 20); time.sleep(30)"])
    try:
        for _ in range(100):
            if memory.rss_bytes(child.pid) > 50 << 20:
                break
            time.sleep(0.05)
        assert child.pid in memory.tree([os.getpid()])
        snap = memory.snapshot([os.getpid()], redis.Redis.from_url(REDIS_URL))
        assert snap["processes"] >= 2 and snap["stack_rss_mb"] > 50 and snap["redis_used_mb"] > 0
    finally:
        child.kill()
        child.wait()
    assert memory.rss_bytes(child.pid) == 0  # gone: no reading, no error


def test_keys_without_ttl() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    namespace = f"memtest{os.getpid()}."
    try:
        client.set(namespace + "kept", 1)
        client.set(namespace + "expiring", 1, ex=60)
        assert memory.keys_without_ttl(client, namespace) == ["kept"]
    finally:
        client.delete(namespace + "kept", namespace + "expiring")


def test_soak_accounting_tells_kills_from_duplicates() -> None:
    from bench import soak, stats

    def outcome(index: int, status: str, error: str | None = None) -> stats.TaskOutcome:
        task = stats.TaskOutcome(index, "hash", 1)
        task.task_id, task.outcome, task.error = f"t{index}", status, error
        return task

    outcomes = [outcome(0, "succeeded"), outcome(1, "failed", "soak failure 1"), outcome(2, "succeeded"),
                outcome(3, "timeout")]
    executions = [{"task_id": "t0", "attempt": 1, "pid": 10, "status": "succeeded"},
                  {"task_id": "t0", "attempt": 1, "pid": 11, "status": "succeeded"},  # 10 was killed
                  *({"task_id": "t1", "attempt": n, "pid": 11, "status": "failed"} for n in (1, 2, 3)),
                  {"task_id": "t2", "attempt": 1, "pid": 11, "status": "succeeded"},
                  {"task_id": "t2", "attempt": 1, "pid": 12, "status": "succeeded"},  # nobody killed 11
                  {"task_id": "t2", "attempt": 1, "pid": 12, "status": "cancelled"}]
    report = soak.account(outcomes, executions, killed_pids={10})
    assert report["statuses"] == {"succeeded": 2, "failed": 1, "timeout": 1} and report["lost"] == 1
    assert report["failed_reasons"] == {"soak failure 1": 1}
    # Retries are new attempts, not duplicates; t0's second run is the kill's doing, t2's is not.
    assert report["computed_more_than_once"] == 2 and report["explained_by_a_kill"] == 1
    assert report["unexplained"] == ["t2 attempt 1"]

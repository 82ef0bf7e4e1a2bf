"""Work stealing, for real (docs/worker_fleet.md, "Work stealing"): a worker whose slot is idle takes
the tasks queued for a busy one, runs each once, and says whose they were; a stealer that dies gives
the task back to the queue it came from."""

from __future__ import annotations

import os
import signal

import pytest

from tests.worker_fleet.conftest import Env

LONG = {"type": "sleep", "payload": {"seconds": 2.0}}


def short(index: int) -> dict:
    return {"type": "sleep", "payload": {"seconds": 0.2 + index / 1000}}  # distinct fingerprints


@pytest.mark.parametrize("stealing", ["on", "off"])
def test_an_idle_worker_takes_what_waits_behind_a_busy_one(env: Env, stealing: str) -> None:
    fleet = env.start(workers=2, concurrency=1, WORK_STEALING=stealing)
    long_task, = env.submit("w-0", LONG)
    fleet.wait_event("started", task_id=long_task.task_id, worker_id="w-0")
    queued = env.submit("w-0", *(short(i) for i in range(3)))  # behind w-0's only slot
    results = {r.task_id: r for r in env.results(4, timeout=20)}
    assert {task_id: r.status for task_id, r in results.items()} == {
        t.task_id: "succeeded" for t in [long_task, *queued]}
    assert results[long_task.task_id].worker_id == "w-0"
    started = {e["task_id"]: e for e in fleet.events("started")}
    for task in queued:
        record = env.store.get(task.task_id)
        assert record is not None
        if stealing == "on":
            # w-1 ran them while w-0 was busy: before the long task ended, and said whose they were.
            assert results[task.task_id].worker_id == "w-1"
            assert started[task.task_id]["stolen_from"] == "w-0" and record["stolen_from"] == "w-0"
            assert results[task.task_id].finished_at < results[long_task.task_id].finished_at
        else:
            assert results[task.task_id].worker_id == "w-0"
            assert "stolen_from" not in started[task.task_id] and "stolen_from" not in record
            assert results[task.task_id].started_at >= results[long_task.task_id].finished_at
    # Each ran once.
    executed = [e["task_id"] for e in fleet.events("executed")]
    assert sorted(executed) == sorted(t.task_id for t in [long_task, *queued])


def test_a_stealer_killed_mid_task_gives_it_back_to_the_queue_it_came_from(env: Env) -> None:
    fleet = env.start(workers=2, concurrency=1)
    long_task, = env.submit("w-0", {"type": "sleep", "payload": {"seconds": 3.0}})
    fleet.wait_event("started", task_id=long_task.task_id, worker_id="w-0")
    stolen, = env.submit("w-0", {"type": "sleep", "payload": {"seconds": 1.5}})
    [first] = fleet.wait_event("started", task_id=stolen.task_id, worker_id="w-1")
    assert first["stolen_from"] == "w-0"
    os.kill(first["pid"], signal.SIGKILL)

    results = {r.task_id: r for r in env.results(2, timeout=25)}
    assert results[stolen.task_id].status == "succeeded" and results[stolen.task_id].attempt == 1
    # Back in w-0's queue: run again from there (by w-0 once free, or stolen again by the new w-1).
    again = fleet.events("started", task_id=stolen.task_id)
    assert len(again) == 2 and again[1]["pid"] != first["pid"]
    assert again[1]["worker_id"] == "w-0" or again[1]["stolen_from"] == "w-0"
    assert len(fleet.events("executed", task_id=stolen.task_id)) == 1  # the killed one never ended
    assert env.depth(env.keys.worker_queue("w-0")) == 0

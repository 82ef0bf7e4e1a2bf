"""What the fault tests share: polling, task shapes, reading records and the host's mappings."""

from __future__ import annotations

import time
import uuid
from typing import Any

from taskfaas.stack import Stack

FINAL = ("succeeded", "failed")


def sleep_task(seconds: float, task_id: str | None = None) -> dict[str, Any]:
    task: dict[str, Any] = {"type": "sleep", "payload": {"seconds": seconds}, "complexity": 1}
    if task_id is not None:
        task["task_id"] = task_id
    return task


def unique_seconds(base: float, spread: float = 0.0) -> float:
    """A sleep length of about base (+ up to spread) that no other task has: a fingerprint of its own."""
    return round(base + spread * (uuid.uuid4().int % 1000) / 1000 + uuid.uuid4().int % 10_000 / 1e7, 7)


def new_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def final_records(stack: Stack, task_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Every task's record once final (fails after `timeout` s with the ones still pending)."""
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    for task_id in task_ids:
        while True:
            left = deadline - time.monotonic()
            status, record = stack.result(task_id, wait=max(0.1, min(left, 10)))
            if status == 200 and record["status"] in FINAL:
                done[task_id] = record
                break
            if left <= 0:
                pending = [t for t in task_ids if t not in done]
                raise AssertionError(f"{len(pending)} tasks not final after {timeout}s, "
                                     f"e.g. {task_id}: {status} {record}")
    return done


def mapping_status(stack: Stack) -> dict[str, Any]:
    """localfaas's status of the results queue's MQ mapping (connected, reconnects, requeued...)."""
    status = stack.host.status()
    (mapping,) = [m for m in status["mappings"] if m["queue"].endswith("results")]
    return mapping

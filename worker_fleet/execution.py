"""One attempt of one task, run in a pool thread: mark it running, simulate its duration, compute it.

Nothing here touches the broker connection (it is not thread-safe); the outcome is handed back to
the connection thread, which publishes and acks (worker.py).

Time limits and cancellation are cooperative: the simulated duration and the `sleep` type wait on the
attempt's `cancel` event, so an attempt that hits its time limit (or a worker that lost its broker
connection) stops within moments instead of occupying a thread. The real computations (primes, hash)
are bounded by the payload limits of taskcore.registry to well under a second, so a thread that cannot
be interrupted there finishes soon anyway; its late outcome is discarded by the worker.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import redis

from taskcore import registry, work
from taskcore.backoff import REDIS_RETRY
from taskcore.messages import Task
from taskcore.settings import Settings
from taskcore.store import TaskStore, now_ms
from worker_fleet.logs import log

# mark_running is tried this often (REDIS_RETRY's pauses between, ~4 s in all) before the attempt runs
# without it: the record is bookkeeping, the message is the source of truth, and the result handler
# needs Redis anyway.
MARK_RUNNING_TRIES = 5


class Cancelled(Exception):
    """The attempt was told to stop (time limit, lost connection, shutdown)."""


@dataclass(frozen=True)
class AttemptOutcome:
    """What an attempt came to. status: "succeeded", "failed", "skipped" (nothing to run: the task
    is already final, or its record is missing because its admission was undone) or "poison" (a
    redelivery past the delivery limit, counted on classic queues: dead-lettered unrun)."""

    status: str
    started_at: int
    finished_at: int
    result: Any = None
    error: str | None = None
    # False for failures that another attempt would not fix (a time limit).
    retryable: bool = True
    reason: str = ""


def attempt_number(task: Task) -> int:
    """The message's `attempt` counts the attempts already made (0 at admission); this is the next."""
    return task.attempt + 1


def run_attempt(task: Task, worker_id: str, settings: Settings, store: TaskStore,
                cancel: threading.Event, redelivered: bool = False, stolen_from: str = "") -> AttemptOutcome:
    attempt = attempt_number(task)
    started = now_ms()
    state = _mark_running(task, worker_id, attempt, started, store, redelivered, stolen_from)
    if state == "poison":
        log("poison", task_id=task.task_id, worker_id=worker_id, attempt=attempt,
            delivery_limit=settings.delivery_limit)
        return AttemptOutcome("poison", started, now_ms(), retryable=False, reason="delivery_limit")
    if state in ("final", "missing"):
        log("skipped", task_id=task.task_id, worker_id=worker_id, attempt=attempt, reason=state)
        return AttemptOutcome("skipped", started, now_ms(), reason=state)
    log("started", task_id=task.task_id, worker_id=worker_id, pid=os.getpid(), attempt=attempt,
        type=task.type, **({"stolen_from": stolen_from} if stolen_from else {}))
    try:
        result = _compute(task, settings, cancel)
        outcome = AttemptOutcome("succeeded", started, now_ms(), result=result)
    except Cancelled:
        outcome = AttemptOutcome("failed", started, now_ms(), error="cancelled", retryable=False,
                                 reason="cancelled")
    except work.TaskFailed as error:
        outcome = AttemptOutcome("failed", started, now_ms(), error=str(error))
    except Exception as error:  # any failure of the task's code is the task's failure, retried
        outcome = AttemptOutcome("failed", started, now_ms(), error=f"{type(error).__name__}: {error}")
    _log_executed(task, worker_id, attempt, outcome)
    return outcome


def _compute(task: Task, settings: Settings, cancel: threading.Event) -> Any:
    if cancel.wait(task.complexity * settings.task_unit_seconds):
        raise Cancelled
    if task.type == "sleep":
        # The sleep type's own pause must be interruptible too, or a time limit could not stop it.
        payload = registry.TASK_TYPES["sleep"].validate(task.payload)
        return work.sleep(payload["seconds"], pause=lambda seconds: _pause(seconds, cancel))
    return registry.execute(task.type, task.payload)


def _pause(seconds: float, cancel: threading.Event) -> None:
    if cancel.wait(seconds):
        raise Cancelled


def _mark_running(task: Task, worker_id: str, attempt: int, started: int, store: TaskStore,
                  redelivered: bool, stolen_from: str) -> str:
    try:
        return REDIS_RETRY.call(
            lambda: store.mark_running(task.task_id, worker_id, attempt, started, task.complexity,
                                       redelivered, stolen_from),
            redis.RedisError, MARK_RUNNING_TRIES)
    except redis.RedisError as error:
        log("redis_unavailable", worker_id=worker_id, task_id=task.task_id, op="mark_running",
            error=repr(error))
        return "unknown"


def _log_executed(task: Task, worker_id: str, attempt: int, outcome: AttemptOutcome) -> None:
    """Logs an attempt that ran (to its end, or until cancelled) as one `executed` line; the worker
    counts it in its heartbeat's `processed`. An attempt cut short by SIGKILL is in neither."""
    status = "cancelled" if outcome.reason == "cancelled" else outcome.status
    log("executed", task_id=task.task_id, fingerprint=task.fingerprint, attempt=attempt,
        worker_id=worker_id, pid=os.getpid(), status=status, error=outcome.error,
        duration_ms=outcome.finished_at - outcome.started_at)


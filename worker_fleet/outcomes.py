"""What an attempt's outcome turns into on the broker: a result message, or a retry.

A failed attempt that may be retried is republished (attempt + 1) to the retry delay queue of its
delay, which hands it back to the shared queue when the delay is over (taskcore.rabbitmq.topology
says how); the worker then acks the original, so no worker slot waits. The worker collects the
outcomes settled in one pass of its event loop and publishes them together, one confirm round per
exchange, then acks each task message whose publication the broker confirmed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from taskcore.keys import RESULTS_ROUTING_KEY, Keys
from taskcore.messages import Task, TaskResult
from taskcore.rabbitmq import OutgoingMessage
from taskcore.rabbitmq.topology import retry_delay_ms
from taskcore.settings import Settings
from worker_fleet.execution import AttemptOutcome, attempt_number

# Retries go through the default exchange, which routes by queue name: straight into the delay queue.
DEFAULT_EXCHANGE = ""


@dataclass(frozen=True)
class Publication:
    """One message to publish before the task message may be acked; `event`/`fields` are logged once
    the broker confirmed it."""

    exchange: str
    message: OutgoingMessage
    event: str
    fields: dict[str, Any]


def should_retry(settings: Settings, attempt: int, retryable: bool) -> bool:
    return retryable and attempt < settings.max_attempts


def next_attempt(task: Task, failed_attempt: int) -> Task:
    """The message of the retry: `attempt` counts the attempts made so far."""
    return dataclasses.replace(task, attempt=failed_attempt)


def publication_for(settings: Settings, worker_id: str, task: Task,
                    outcome: AttemptOutcome) -> Publication | None:
    """None when there is nothing to publish (a skipped task: just ack it)."""
    attempt = attempt_number(task)
    keys = Keys(settings.namespace)
    if outcome.status == "skipped":
        return None
    if outcome.status == "failed" and should_retry(settings, attempt, outcome.retryable):
        delay_ms = retry_delay_ms(settings, attempt)
        message = OutgoingMessage(keys.retry_queue(delay_ms), next_attempt(task, attempt).to_json(),
                                  task.task_id)
        return Publication(DEFAULT_EXCHANGE, message, "retry_scheduled",
                           {"failed_attempt": attempt, "delay_ms": delay_ms, "error": outcome.error})
    result = TaskResult(task_id=task.task_id, fingerprint=task.fingerprint, status=outcome.status,
                        worker_id=worker_id, started_at=outcome.started_at, finished_at=outcome.finished_at,
                        attempt=attempt, result=outcome.result, error=outcome.error)
    message = OutgoingMessage(RESULTS_ROUTING_KEY, result.to_json(), task.task_id)
    return Publication(keys.results_exchange, message, "result_published",
                       {"status": outcome.status, "attempt": attempt, "error": outcome.error})

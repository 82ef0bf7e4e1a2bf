"""What an attempt's outcome turns into on the broker: a result message, or a retry.

The worker collects the outcomes settled in one pass of its event loop and publishes them together
(publish_all), with one confirm round per exchange instead of one per message, then acks each task
message whose publication the broker confirmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskcore.broker import ConfirmingChannel
from taskcore.keys import RESULTS_ROUTING_KEY, Keys
from taskcore.messages import Task, TaskResult
from taskcore.settings import Settings
from worker_fleet import retries
from worker_fleet.execution import Outcome, attempt_number


@dataclass(frozen=True)
class Publication:
    """One message to publish before the task message may be acked; `event`/`fields` are logged once
    the broker confirmed it."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    event: str
    fields: dict[str, Any]


def publication_for(settings: Settings, worker_id: str, task: Task, outcome: Outcome) -> Publication | None:
    """None when there is nothing to publish (a skipped task: just ack it)."""
    attempt = attempt_number(task)
    if outcome.status == "skipped":
        return None
    if outcome.status == "failed" and retries.should_retry(settings, attempt, outcome.retryable):
        delay_ms = retries.retry_delay_ms(settings, attempt)
        # Through the default exchange straight into the delay queue; it dead-letters back on expiry.
        return Publication("", retries.delay_queue(settings, delay_ms),
                           retries.next_attempt(task, attempt).to_json(), task.task_id, "retry_scheduled",
                           {"failed_attempt": attempt, "delay_ms": delay_ms, "error": outcome.error})
    result = TaskResult(task_id=task.task_id, fingerprint=task.fingerprint, status=outcome.status,
                        worker_id=worker_id, started_at=outcome.started_at, finished_at=outcome.finished_at,
                        attempt=attempt, result=outcome.result, error=outcome.error)
    return Publication(Keys(settings.namespace).results_exchange, RESULTS_ROUTING_KEY, result.to_json(),
                       task.task_id, "result_published",
                       {"status": outcome.status, "attempt": attempt, "error": outcome.error})


def publish_all(confirming: ConfirmingChannel, plans: Sequence[Publication | None],
                timeout: float) -> list[str | None]:
    """Publishes every plan, one confirm round per exchange. Returns per plan "ok" (confirmed, or
    nothing to publish), "nack" or "unroutable". No confirm within `timeout` raises a connection
    error: the worker reconnects and the broker redelivers the unacked tasks."""
    verdicts: list[str | None] = ["ok" if plan is None else None for plan in plans]
    pending = [(index, plan) for index, plan in enumerate(plans) if plan is not None]
    for exchange in dict.fromkeys(plan.exchange for _, plan in pending):
        batch = [(index, plan) for index, plan in pending if plan.exchange == exchange]
        outcome: list[str | None] = [None] * len(batch)
        confirming.publish(exchange, [(plan.routing_key, plan.body, plan.message_id) for _, plan in batch],
                           range(len(batch)), outcome, timeout)
        for (index, _), verdict in zip(batch, outcome, strict=True):
            verdicts[index] = verdict
    return verdicts

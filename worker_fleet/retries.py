"""Retries with exponential backoff that hold no worker slot while they wait.

A failed attempt is republished (attempt + 1) to a delay queue `tasks.retry.<ms>ms`, one per delay,
declared with x-message-ttl=<ms> and dead-lettering to the tasks exchange; the original message is then
acked. When the TTL runs out the broker moves the message back by itself, so no worker waits and no
timer has to survive a worker crash. A per-delay queue (rather than a per-message expiration) keeps
the queue FIFO by expiry: every message in it has the same TTL, so none waits behind a longer one.

Retries come back on the shared queue (routing key "shared"), which every worker consumes and no
janitor ever deletes: the worker that failed may be gone by then, and its queue with it (the janitor
deletes dead workers' queues, and a dead-lettered message with nowhere to go would be dropped).
"""

from __future__ import annotations

import dataclasses

from pika.adapters.blocking_connection import BlockingChannel

from taskcore.backoff import task_retry
from taskcore.keys import SHARED_ROUTING_KEY, Keys
from taskcore.messages import Task
from taskcore.settings import Settings


def retry_delay_ms(settings: Settings, failed_attempt: int) -> int:
    """Wait after attempt `failed_attempt` (1-based) failed (taskcore.backoff.task_retry)."""
    return round(task_retry(settings.task_unit_seconds).pause(failed_attempt) * 1000)


def retry_delays_ms(settings: Settings) -> list[int]:
    """Every delay these settings can use (attempts 1 .. MAX_ATTEMPTS-1 can be retried)."""
    return sorted({retry_delay_ms(settings, attempt) for attempt in range(1, settings.max_attempts)})


def delay_queue(settings: Settings, delay_ms: int) -> str:
    return Keys(settings.namespace).retry_queue(delay_ms)


def declare_delay_queues(channel: BlockingChannel, settings: Settings) -> list[str]:
    keys = Keys(settings.namespace)
    queues = []
    for delay_ms in retry_delays_ms(settings):
        queue = delay_queue(settings, delay_ms)
        # Classic: message TTL with dead-lettering on expiry is what classic queues do best; the
        # messages only pass through, and a broker restart keeps them (durable, persistent).
        channel.queue_declare(queue, durable=True, arguments={
            "x-queue-type": "classic",
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": keys.tasks_exchange,
            "x-dead-letter-routing-key": SHARED_ROUTING_KEY,
        })
        queues.append(queue)
    return queues


def should_retry(settings: Settings, attempt: int, retryable: bool) -> bool:
    return retryable and attempt < settings.max_attempts


def next_attempt(task: Task, failed_attempt: int) -> Task:
    """The message of the retry: `attempt` counts the attempts made so far."""
    return dataclasses.replace(task, attempt=failed_attempt)

"""The result handler's logic: read a batch of result messages (an aws:rmq event) and store them.

A Redis that is down must not cost results: the batch is retried within the invocation while it
has time left, so a short outage is absorbed, and only then does the invocation fail (the mapping
returns the batch to the queue). Failing at once would spend the queue's delivery limit in seconds
and dead-letter good results. An error that is not the connection's (a script error on a
corrupted record) is raised at once: waiting cannot fix it."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from taskcore.messages import MessageError, TaskResult
from taskcore.store import TaskStore

log = logging.getLogger("taskcore.results")

# Pauses between attempts while Redis is unreachable; the last one repeats.
RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0)
# Stop retrying with this much of the invocation left, so the failure is reported before the timeout.
MARGIN_MS = 3000
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


def read_batch(event: dict[str, Any]) -> tuple[list[TaskResult], int]:
    """The results of an aws:rmq event, and how many messages were not results (skipped: storing
    them is impossible and redelivery cannot help)."""
    results, unreadable = [], 0
    for messages in event.get("rmqMessagesByQueue", {}).values():
        for message in messages:
            try:
                results.append(TaskResult.from_json(base64.b64decode(message["data"])))
            except (MessageError, ValueError, KeyError) as error:
                unreadable += 1
                log.error("unreadable result message skipped: %s", error)
    return results, unreadable


def store_batch(store: TaskStore, event: dict[str, Any], remaining_ms: Callable[[], int],
                sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """Stores the event's results; retries while Redis is unreachable and `remaining_ms()` (the
    invocation's time left) allows, then raises."""
    results, unreadable = read_batch(event)
    attempts = 0
    while True:
        attempts += 1
        try:
            outcomes = store.complete(results) if results else []
            break
        except TRANSIENT as error:
            pause = RETRY_PAUSES[min(attempts, len(RETRY_PAUSES)) - 1]
            if remaining_ms() - pause * 1000 < MARGIN_MS:
                raise
            log.warning("Redis unreachable (%r); storing the batch again in %.1f s", error, pause)
            sleep(pause)
    return {"stored": outcomes.count("completed"), "duplicates": outcomes.count("duplicate"),
            "unreadable": unreadable, "attempts": attempts}

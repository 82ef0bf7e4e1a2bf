"""The result handler's logic: read a batch of result messages (an aws:rmq event) and store them.

A Redis that is down must not cost results: the batch is retried within the invocation while it
has time left, so a short outage is absorbed, and only then does the invocation fail (the mapping
returns the batch to the queue). Failing at once would spend the queue's delivery limit in seconds
and dead-letter good results.

A poison message must not cost the others either: one that is not a result, or a result whose
storing fails whatever the wait (a script error on a corrupted record), is dead-lettered on its
own (to results.dead, counted in GET /stats) and the rest of the batch is stored. Failing the
batch for it would have the broker dead-letter the whole batch, good results with it.

A result for a task id without a record is dropped with a log line, not stored (which would make a
record nobody submitted) and not dead-lettered: it is no poison (storing it cannot fail, and
delivering it again cannot help) but a late result after its record expired or was removed, or one
from a worker of a wiped namespace, and results.dead is for what an operator must look at. See
scripts.COMPLETE for the one case it still serves (followers waiting on an id whose record is gone)."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from taskcore.backoff import REDIS_RETRY
from taskcore.messages import MessageError, TaskResult
from taskcore.states import Completion
from taskcore.store import TaskStore

log = logging.getLogger("taskcore.results")

# Stop retrying with this much of the invocation left, so the failure is reported before the timeout.
MARGIN_MS = 3000
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


# Sends poison messages to results.dead: (raw body, message id) each; raises if it cannot.
DeadLetter = Callable[[list[tuple[bytes, str]]], None]


def read_batch(event: dict[str, Any]) -> tuple[list[tuple[TaskResult, bytes]], list[tuple[bytes, str]]]:
    """The results of an aws:rmq event with their raw bodies, and the messages that are not
    results (raw body, reason)."""
    results, unreadable = [], []
    for messages in event.get("rmqMessagesByQueue", {}).values():
        for message in messages:
            try:
                body = base64.b64decode(message["data"])
            except (ValueError, KeyError, TypeError) as error:
                unreadable.append((b"", f"no data: {error}"))
                continue
            try:
                results.append((TaskResult.from_json(body), body))
            except (MessageError, ValueError) as error:
                unreadable.append((body, str(error)))
    return results, unreadable


def store_batch(store: TaskStore, event: dict[str, Any], remaining_ms: Callable[[], int],
                dead_letter: DeadLetter, sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """Stores the event's results; retries while Redis is unreachable and `remaining_ms()` (the
    invocation's time left) allows, then raises; dead-letters poison messages one by one."""
    results, unreadable = read_batch(event)
    poison = [(body, f"unreadable: {reason}") for body, reason in unreadable]
    attempts, outcomes = 0, []  # outcomes: (result, Completion)
    while results:
        attempts += 1
        try:
            outcomes = list(zip([result for result, _ in results],
                                store.complete([result for result, _ in results]), strict=True))
            break
        except TRANSIENT as error:
            pause = REDIS_RETRY.pause(attempts)
            if remaining_ms() - pause * 1000 < MARGIN_MS:
                raise
            log.warning("Redis unreachable (%r); storing the batch again in %.1f s", error, pause)
            sleep(pause)
        except redis.ResponseError:
            # Something in the batch cannot be stored: find it by storing them one by one.
            outcomes = []
            for result, body in results:
                try:
                    outcomes += [(result, outcome) for outcome in store.complete([result])]
                except redis.ResponseError as error:
                    poison.append((body, f"cannot be stored: {error}"))
            break
    if poison:
        for body, reason in poison:
            log.error("poison result message dead-lettered: %s: %r", reason, body[:200])
        dead_letter([(body, "") for body, _ in poison])
    unknown = [(result, outcome) for result, outcome in outcomes
               if outcome in (Completion.UNKNOWN, Completion.UNKNOWN_LEADER)]
    for result, outcome in unknown:
        log.warning("result for unknown task %s dropped (no record: never admitted here, or expired "
                    "or removed)%s: %s from %s, attempt %d", result.task_id,
                    "; its followers got it" if outcome == Completion.UNKNOWN_LEADER else "", result.status,
                    result.worker_id or "?", result.attempt)
    done = [outcome for _, outcome in outcomes]
    return {"stored": done.count(Completion.COMPLETED), "duplicates": done.count(Completion.DUPLICATE),
            "unknown": len(unknown), "dead_lettered": len(poison), "attempts": attempts}

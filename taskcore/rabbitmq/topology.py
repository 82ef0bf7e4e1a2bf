"""The RabbitMQ topology of a namespace, as data (docs/architecture.md §4): every exchange, queue,
queue argument and binding, the retry delay queues included. Both brokers declare exactly this.

Queue types: `tasks.shared`, `tasks.w.<id>` and `results` are quorum queues with x-delivery-limit,
so a message that keeps failing (a worker killed on it again and again, a handler that keeps
erroring) is dead-lettered to `tasks.dead` / `results.dead` instead of cycling forever; classic
queues have no delivery limit. The dead-letter queues are classic (they only hold messages for
inspection). Quorum queues must be durable and non-exclusive, which these are anyway.

Retries hold no worker slot while they wait: a failed attempt is republished (attempt + 1) through
the default exchange to a delay queue `tasks.retry.<ms>ms`, one per delay, with x-message-ttl=<ms>
and dead-lettering to the tasks exchange with routing key "shared". When the TTL runs out the broker
moves the message back by itself, so no worker waits and no timer has to survive a worker crash. A
queue per delay (rather than a per-message expiration) keeps each one FIFO by expiry: every message
in it has the same TTL, so none waits behind a longer one. Retries come back on the shared queue,
which every worker consumes and no janitor deletes: the worker that failed may be gone by then, and
its queue with it (a dead-lettered message with nowhere to go would be dropped).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from taskcore import keys as names
from taskcore.backoff import task_retry
from taskcore.keys import Keys
from taskcore.settings import Settings

# Argument names both brokers understand (RabbitMQ's own).
QUEUE_TYPE = "x-queue-type"
DELIVERY_LIMIT = "x-delivery-limit"
DEAD_LETTER_EXCHANGE = "x-dead-letter-exchange"
DEAD_LETTER_ROUTING_KEY = "x-dead-letter-routing-key"
MESSAGE_TTL = "x-message-ttl"
QUEUE_VERSION = "x-queue-version"


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue, its arguments, and the (exchange, routing key) bindings that feed it."""

    name: str
    arguments: dict[str, Any]
    bindings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[str, ...]  # all direct and durable
    queues: tuple[QueueSpec, ...]  # the order GET /stats lists them in

    def queue(self, name: str) -> QueueSpec:
        return next(queue for queue in self.queues if queue.name == name)


def retry_delay_ms(settings: Settings, failed_attempt: int) -> int:
    """Wait after attempt `failed_attempt` (1-based) failed (taskcore.backoff.task_retry)."""
    return round(task_retry(settings.task_unit_seconds).pause(failed_attempt) * 1000)


def retry_delays_ms(settings: Settings) -> list[int]:
    """Every delay these settings can use (attempts 1 .. MAX_ATTEMPTS-1 can be retried)."""
    return sorted({retry_delay_ms(settings, attempt) for attempt in range(1, settings.max_attempts)})


def work_queue_arguments(settings: Settings, dead_routing_key: str) -> dict[str, Any]:
    dead_letter = {DEAD_LETTER_EXCHANGE: Keys(settings.namespace).dead_exchange,
                   DEAD_LETTER_ROUTING_KEY: dead_routing_key}
    if settings.queue_type == "classic":
        # Version 2 (RabbitMQ 3.10+): a message store that costs about half of a quorum queue's CPU per
        # message (bench/broker_cost.py); no delivery limit, so the worker counts redeliveries.
        return {QUEUE_TYPE: "classic", QUEUE_VERSION: 2, **dead_letter}
    return {QUEUE_TYPE: "quorum", DELIVERY_LIMIT: settings.delivery_limit, **dead_letter}


def worker_queue(settings: Settings, worker_id: str) -> QueueSpec:
    keys = Keys(settings.namespace)
    return QueueSpec(keys.worker_queue(worker_id),
                     work_queue_arguments(settings, names.TASKS_DEAD_ROUTING_KEY),
                     ((keys.tasks_exchange, names.worker_routing_key(worker_id)),))


def delay_queue(settings: Settings, delay_ms: int) -> QueueSpec:
    keys = Keys(settings.namespace)
    # Classic: message TTL with dead-lettering on expiry is what classic queues do best; the
    # messages only pass through, and a broker restart keeps them (durable, persistent).
    return QueueSpec(keys.retry_queue(delay_ms), {
        QUEUE_TYPE: "classic",
        MESSAGE_TTL: delay_ms,
        DEAD_LETTER_EXCHANGE: keys.tasks_exchange,
        DEAD_LETTER_ROUTING_KEY: names.SHARED_ROUTING_KEY,
    })


def topology(settings: Settings, worker_ids: Iterable[str] = ()) -> Topology:
    """Exchanges, dead-letter queues, the shared and results work queues, the retry delay queues of
    these settings (MAX_ATTEMPTS, TASK_UNIT_SECONDS), and the queues of `worker_ids`."""
    keys = Keys(settings.namespace)
    queues = [
        QueueSpec(keys.shared_queue, work_queue_arguments(settings, names.TASKS_DEAD_ROUTING_KEY),
                  ((keys.tasks_exchange, names.SHARED_ROUTING_KEY),)),
        QueueSpec(keys.results_queue, work_queue_arguments(settings, names.RESULTS_DEAD_ROUTING_KEY),
                  ((keys.results_exchange, names.RESULTS_ROUTING_KEY),)),
        QueueSpec(keys.tasks_dead_queue, {}, ((keys.dead_exchange, names.TASKS_DEAD_ROUTING_KEY),)),
        QueueSpec(keys.results_dead_queue, {}, ((keys.dead_exchange, names.RESULTS_DEAD_ROUTING_KEY),)),
        *(delay_queue(settings, delay_ms) for delay_ms in retry_delays_ms(settings)),
        *(worker_queue(settings, worker_id) for worker_id in worker_ids),
    ]
    return Topology((keys.tasks_exchange, keys.results_exchange, keys.dead_exchange), tuple(queues))

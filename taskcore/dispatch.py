"""The supervisor's logic without HTTP: submit (admit + confirmed publish), the janitor, reports."""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from taskcore.errors import Unavailable
from taskcore.keys import SHARED, Keys, routing_key_for
from taskcore.messages import MAX_COMPLEXITY, MessageError, Task, TaskResult, TaskSpec, ValidationError
from taskcore.rabbitmq import Broker, BrokerError, PublishError, QueueNotFound, QueueReader
from taskcore.registry import TASK_TYPES
from taskcore.settings import Settings
from taskcore.states import TaskStatus
from taskcore.store import Admission, TaskStore, now_ms

log = logging.getLogger("taskcore.dispatch")

# Messages moved per confirm round by the janitor.
JANITOR_BATCH = 200
# How long a worker whose queue did not confirm a publish is left out of the round-robin (then it is
# tried again; if its queue still does not confirm, one submission waits half its time and the
# worker is left out again).
UNCONFIRMED_SECONDS = 60.0
# A worker holds a message it stole from another's queue (docs/worker_fleet.md, "Work stealing")
# while the attempt runs, at most its time limit, and a stealer that hangs holds it until the broker
# drops its connection (heartbeat timeout, 60 s). A message given back must find its queue: so the
# janitor drains a dead worker's queue at once but deletes it only once the worker has been dead
# this much longer (a get holds no consumer, so "idle" cannot tell).
STEAL_HOLD_MARGIN_SECONDS = 60.0


def steal_hold_ms(settings: Settings) -> int:
    """How long after a worker's death a message stolen from its queue may still come back to it."""
    return int((settings.time_limit(MAX_COMPLEXITY) + STEAL_HOLD_MARGIN_SECONDS) * 1000)


def assign_ids(specs: Sequence[TaskSpec]) -> list[TaskSpec]:
    """Gives every spec without a task_id a fresh UUID: the one place ids are given (submit)."""
    return [spec if spec.task_id else spec.with_id(str(uuid.uuid4())) for spec in specs]


def submit(specs: Sequence[TaskSpec], settings: Settings, store: TaskStore, broker: Broker,
           now: int | None = None, deadline_ms: int | None = None) -> list[dict[str, Any]]:
    """Admits the tasks and publishes the ones that must run, with broker confirms.

    Returns {"task_id", "status", "cache", "worker_id"} per task, in order. Raises Unavailable when
    Redis or RabbitMQ fails; every admission of the request is undone first, so a 503 leaves no
    record and no inflight key (a message the broker did confirm before the failure finds no
    record, and MARK_RUNNING answers "missing" for it).

    `deadline_ms` (epoch ms): when the caller stops waiting for the answer (the producer sends it,
    taskcore.messages.deadline_for). Nothing is admitted after it, and a publish still unconfirmed
    by then is given up and its admissions undone, so that a caller who answered 503 leaves
    nothing behind.

    A message a worker's queue does not take goes to the shared queue instead, which every worker
    consumes: unroutable (the worker was reaped since it was picked), or not confirmed within half
    the time left (a queue without a leader: docs/taskcore.md, "A broker bug to know"). A worker
    whose queue did not confirm is left out of the round-robin for UNCONFIRMED_SECONDS, so that
    the next submissions do not wait for it too.
    """
    now = now_ms() if now is None else now
    publish_deadline = None
    if deadline_ms is not None:
        left_ms = deadline_ms - now_ms()
        if left_ms <= 0:  # e.g. the invocation waited for an environment longer than the caller did
            raise Unavailable("the caller's deadline passed before the tasks could be admitted",
                              {"late_by_ms": -left_ms})
        publish_deadline = time.monotonic() + left_ms / 1000
    tasks = [Task.from_spec(spec, now) for spec in assign_ids(specs)]
    try:
        admissions = store.admit(tasks, now, deadline_ms)
    except redis.RedisError as error:
        raise Unavailable("the task store (Redis) is unavailable", {"reason": repr(error)}) from error
    replies = [a.reply() for a in admissions]
    leaders = [(i, a) for i, a in enumerate(admissions) if a.needs_publish]
    try:
        try:
            broker.publish_tasks([(routing_key_for(a.worker_id), a.task) for _, a in leaders],
                                 _halfway(publish_deadline))
        except PublishError as error:
            stuck = _stuck_in_worker_queues(error, [a for _, a in leaders])
            if stuck is None:
                raise
            rerouted = [leaders[i] for i in stuck]
            broker.publish_tasks([(routing_key_for(SHARED), a.task) for _, a in rerouted], publish_deadline)
            # The broker took those: the queues that did not confirm are the trouble, not the broker.
            silent = sorted({leaders[i][1].worker_id for i in error.unconfirmed})
            if silent:
                log.warning("worker queues did not confirm a publish, rerouted to the shared queue: %s",
                            silent)
                store.mark_unconfirmed(silent, UNCONFIRMED_SECONDS)
            store.reassign([a.task.task_id for _, a in rerouted], SHARED)
            for index, _ in rerouted:
                replies[index]["worker_id"] = SHARED
    except (PublishError, redis.RedisError) as error:
        _undo(store, admissions, now)
        raise Unavailable("the broker (RabbitMQ) did not accept the tasks", {"reason": str(error)}) from error
    return replies


def _halfway(deadline: float | None) -> float | None:
    """Half the time left to `deadline` (time.monotonic()): the rest is for a second try."""
    return None if deadline is None else time.monotonic() + (deadline - time.monotonic()) / 2


def _stuck_in_worker_queues(error: PublishError, leaders: Sequence[Admission]) -> list[int] | None:
    """The messages a retry on the shared queue may fix: those a worker's queue did not take
    (unroutable, or unconfirmed). None when that would not do: a message was refused (nacked), or
    one that failed was for the shared queue already."""
    stuck = sorted({*error.unroutable, *error.unconfirmed})
    if error.nacked or not stuck or any(leaders[i].worker_id == SHARED for i in stuck):
        return None
    return stuck


def _undo(store: TaskStore, admissions: Sequence[Admission], now: int) -> None:
    try:
        store.undo(admissions, now)
    except redis.RedisError:
        # Redis failing too: the records keep their TTL, and the inflight keys theirs.
        log.exception("could not undo %d admissions", len(admissions))


# Janitor ------------------------------------------------------------------------------------------

def janitor(settings: Settings, store: TaskStore, broker: Broker,
            now: int | None = None) -> dict[str, Any]:
    """Moves the queued tasks of dead workers to live ones (or the shared queue when none is live),
    deletes the dead workers' queues once no stolen message can come back to them (steal_hold_ms)
    and forgets those workers; fails the dead-lettered tasks. Safe to run concurrently with
    dispatch and to re-run after a crash: a worker is only forgotten once its queue is gone."""
    now = now_ms() if now is None else now
    keys = Keys(settings.namespace)
    dead = store.dead_workers(now)
    dead_long_enough = set(store.dead_workers(now - steal_hold_ms(settings)))
    live = store.live_workers(now)
    report: dict[str, Any] = {"dead": dead, "moved": {}, "removed": [], "kept": []}
    for worker in dead:
        queue = keys.worker_queue(worker)
        try:
            # Unbound first, so nothing new lands in the queue while it is drained: a publish for
            # this worker is now unroutable, and submit() sends it to the shared queue instead.
            if not broker.unbind_worker_queue(worker):
                report["removed"] += store.forget_workers([worker], now)
                continue
            moved = _drain(queue, live, store, broker)
            deleted = worker in dead_long_enough and broker.delete_if_idle(queue)
        except BrokerError as error:
            log.warning("janitor: could not move %s: %r", queue, error)
            report["kept"].append(worker)
            continue
        if moved:
            report["moved"][worker] = moved
        if deleted:
            report["removed"] += store.forget_workers([worker], now)
        else:
            report["kept"].append(worker)
    report["failed_dead"] = fail_dead_tasks(store, broker, keys, now)
    return report


DEAD_LETTERED = ("dead-lettered: the broker gave up delivering this task (its delivery limit was "
                 "exceeded: every worker that took it crashed or rejected it)")


def fail_dead_tasks(store: TaskStore, broker: Broker, keys: Keys, now: int) -> int:
    """Fails the tasks the broker dead-lettered to tasks.dead (a worker crashed on each delivery,
    or rejected the message), with that reason, so that they and their followers end instead of
    waiting for their TTL; acks them once failed. Messages that are no task stay there, for an
    operator (and GET /stats) to see. Returns how many tasks it failed."""
    failed = 0
    with broker.reader(keys.tasks_dead_queue) as reader:
        while True:
            tasks, garbage = [], []
            while len(tasks) + len(garbage) < JANITOR_BATCH:
                try:
                    delivery = reader.get()
                except QueueNotFound:  # no topology declared yet: nothing was dead-lettered
                    return failed
                if delivery is None:
                    break
                try:
                    tasks.append((delivery.tag, Task.from_json(delivery.body)))
                except MessageError:
                    garbage.append(delivery.tag)  # held until the end of the batch, then returned
            if tasks:
                store.complete([TaskResult(task.task_id, task.fingerprint, TaskStatus.FAILED, "", now, now,
                                           task.attempt + 1, error=DEAD_LETTERED) for _, task in tasks], now)
                for tag, _ in tasks:
                    reader.ack(tag)
                failed += len(tasks)
            for tag in garbage:
                reader.reject(tag, requeue=True)
            if len(tasks) + len(garbage) < JANITOR_BATCH or not tasks:
                return failed


def _drain(queue: str, live: list[str], store: TaskStore, broker: Broker) -> dict[str, int]:
    """Moves every ready message of `queue` to live workers' queues, a batch per confirm."""
    moved: dict[str, int] = defaultdict(int)
    with broker.reader(queue) as reader:
        while True:
            batch = _get_batch(reader)
            if not batch:
                return dict(moved)
            first = store.take_turns(len(batch))
            targets = [live[(first + j) % len(live)] if live else SHARED for j in range(len(batch))]
            broker.publish_tasks([(routing_key_for(t), task) for t, (_, task) in zip(targets, batch,
                                                                                     strict=True)])
            reader.ack(batch[-1][0], multiple=True)
            by_target: dict[str, list[str]] = defaultdict(list)
            for target, (_, task) in zip(targets, batch, strict=True):
                by_target[target].append(task.task_id)
            for target, ids in by_target.items():
                store.reassign(ids, target)
                moved[target] += len(ids)


def _get_batch(reader: QueueReader) -> list[tuple[int, Task]]:
    batch: list[tuple[int, Task]] = []
    while len(batch) < JANITOR_BATCH:
        delivery = reader.get()
        if delivery is None:
            break
        try:
            batch.append((delivery.tag, Task.from_json(delivery.body)))
        except MessageError:
            # Unparseable: dead-letter it now rather than moving garbage around.
            reader.reject(delivery.tag, requeue=False)
    return batch


# Reports ------------------------------------------------------------------------------------------

def worker_report(store: TaskStore, now: int | None = None) -> dict[str, Any]:
    """GET /workers: live workers (heartbeat age, in_flight, processed...) and the dead not yet reaped."""
    now = now_ms() if now is None else now
    entries = store.worker_report(now)
    return {"workers": [e for e in entries if e["live"]], "dead": [e for e in entries if not e["live"]]}


def queue_depths(broker: Broker, worker_ids: Sequence[str]) -> dict[str, int | None]:
    """Messages ready in every queue of the topology (None: not declared), the retry delay queues
    included (a retry waiting out its delay is work still to come), and in live workers' queues."""
    return broker.depths([queue.name for queue in broker.topology(worker_ids).queues])


def stats(settings: Settings, store: TaskStore, broker: Broker,
          now: int | None = None) -> dict[str, Any]:
    """GET /stats: queue depths, task counts by status, cache ratios, recent throughput.
    Queue depths are None when the broker is unreachable; Redis failures raise."""
    now = now_ms() if now is None else now
    result = store.stats(now)
    try:
        result["queues"] = queue_depths(broker, store.live_workers(now))
    except BrokerError as error:
        result["queues"] = None
        result["broker_error"] = repr(error)
    return result


# GET /tasks: the recent index, filtered -----------------------------------------------------------

DEFAULT_RECENT_LIMIT = 20
MAX_RECENT_LIMIT = 100
TASK_STATUSES = tuple(TaskStatus)  # `word in TaskStatus` raises TypeError before Python 3.12
_RECENT_PARAMS = ("limit", "state", "type")


def recent_tasks(store: TaskStore, query: Mapping[str, str] | None) -> dict[str, Any]:
    """GET /tasks?limit=N&state=S&type=T: the newest records first (of the last RECENT_TASKS
    submitted), those in state S and/or of type T only when asked; raises ValidationError."""
    limit, state, task_type = parse_recent_query(query)
    return {"tasks": store.recent(limit, state, task_type)}


def parse_recent_query(query: Mapping[str, str] | None) -> tuple[int, str | None, str | None]:
    query = query or {}
    # A misspelt filter (status= for state=) would otherwise answer an unfiltered list.
    unknown = sorted(set(query) - set(_RECENT_PARAMS))
    if unknown:
        raise ValidationError("unknown_parameter", f"unknown query parameter(s): {', '.join(unknown)}",
                              {"unknown": unknown, "allowed": list(_RECENT_PARAMS)})
    raw = query.get("limit", str(DEFAULT_RECENT_LIMIT))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= MAX_RECENT_LIMIT):
        raise ValidationError("invalid_limit", f"limit must be an integer from 1 to {MAX_RECENT_LIMIT}",
                              {"max": MAX_RECENT_LIMIT})
    state, task_type = query.get("state"), query.get("type")
    if state is not None and state not in TASK_STATUSES:
        raise ValidationError("invalid_state", f"state must be one of {', '.join(TASK_STATUSES)}",
                              {"allowed": list(TASK_STATUSES)})
    if task_type is not None and task_type not in TASK_TYPES:
        raise ValidationError("unknown_type", f"type must be one of {', '.join(sorted(TASK_TYPES))}",
                              {"known": sorted(TASK_TYPES)})
    return int(raw), state, task_type

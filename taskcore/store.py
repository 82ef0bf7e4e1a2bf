"""Task records, the result cache, coalescing and worker liveness in Redis (docs/architecture.md §5).

`TaskStorage` is the interface the rest of the system relies on; `TaskStore` implements it on
redis-py with the Lua scripts of scripts.py. Every script is safe to retry: redis-py re-sends a
command whose connection dropped, and an admission re-sent with the same token reports what the
first one did instead of "exists".
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import redis

from taskcore import scripts
from taskcore.keys import Keys
from taskcore.messages import Task, TaskResult
from taskcore.settings import Settings
from taskcore.states import FINAL_STATUSES, Admitted, CacheOutcome, Completion, RunVerdict, TaskStatus

# Record fields stored as JSON text, decoded by get().
_JSON_FIELDS = ("payload", "result")
_INT_FIELDS = ("complexity", "submitted_at", "started_at", "finished_at", "attempt")
# Bookkeeping of the scripts, not part of a task's record as the API shows it.
_HIDDEN_FIELDS = ("admission", "deliveries")
# Task ids kept in the recent index (ADMIT trims it): what GET /tasks can list and filter.
RECENT_TASKS = 1_000
# Records read per round trip while filtering the recent index.
_RECENT_PAGE = 100
# The record fields GET /tasks lists: all but the payload (up to 64 K characters each) and the
# admission token, so a page of a hundred stays small.
_LISTED_FIELDS = ("status", "type", "complexity", "cache", "worker_id", "leader", "attempt", "fingerprint",
                  "submitted_at", "started_at", "finished_at", "result", "error")
# The counters of the stats hash (scripts.py writes them by these names).
_STAT_FIELDS = (*(f"cache_{c}" for c in CacheOutcome), Admitted.EXISTS, *TaskStatus)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Admission:
    """What admission decided for one task (`outcome`), and the record's status and cache."""

    task: Task
    outcome: Admitted
    status: TaskStatus
    cache: CacheOutcome
    worker_id: str
    leader: str = ""
    token: str = ""
    result_json: str = ""  # a hit's cached result, as stored

    @property
    def needs_publish(self) -> bool:
        return self.outcome == Admitted.DISPATCH

    def reply(self) -> dict[str, Any]:
        """The per-task answer of POST /supervise."""
        reply = {"task_id": self.task.task_id, "status": self.status, "cache": self.cache,
                 "worker_id": self.worker_id, "existing": self.outcome == Admitted.EXISTS}
        if self.result_json:
            # A hit is final at once: its result comes with the answer, no GET needed.
            reply["result"] = json.loads(self.result_json)
        return reply


class TaskStorage(Protocol):
    """The storage the supervisor, result handler and workers need; all times in epoch ms."""

    def admit(self, tasks: Sequence[Task], now: int, deadline_ms: int | None = None) -> list[Admission]:
        """Atomically admits tasks (hit, coalesce, or lead and pick a worker), in input order; admits
        nothing and raises a TimeoutError if the store would run it after `deadline_ms`."""
        ...

    def undo(self, admissions: Sequence[Admission], now: int) -> int:
        """Reverts admissions whose publish failed; returns how many records were removed."""
        ...

    def mark_unconfirmed(self, worker_ids: Sequence[str], seconds: float) -> None:
        """Leaves these workers out of the round-robin for `seconds`: their queues did not confirm
        a publish (admit picks the others, or the shared queue)."""
        ...

    def complete(self, results: Sequence[TaskResult], now: int) -> list[Completion]:
        """Stores results with their followers, idempotently: a Completion each (unknown and
        unknown_leader: no record, nothing stored, see scripts.COMPLETE)."""
        ...

    def mark_running(self, task_id: str, worker_id: str, attempt: int, started_at: int,
                     complexity: int, redelivered: bool = False, stolen_from: str = "") -> RunVerdict:
        """A worker starts an attempt: running, final (skip it), missing (drop it) or poison (a
        redelivery past the delivery limit on classic queues: dead-letter it). `stolen_from`: the
        worker whose queue it was taken from, kept in the record (none: the field is removed)."""
        ...

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The task record, decoded, or None."""
        ...

    def wait(self, task_id: str, seconds: float) -> dict[str, Any] | None:
        """The record once final, or as it is after `seconds`; None for an unknown id."""
        ...

    def wait_many(self, task_ids: Sequence[str], seconds: float) -> dict[str, dict[str, Any]]:
        """Records by id (unknown ids left out) once every known one is final, or as they are after
        `seconds`."""
        ...

    def heartbeat(self, worker_id: str, info: dict[str, Any], now: int, processed: int = 0) -> None:
        """A worker says it is alive; `info` is host, pid, concurrency, in_flight...; `processed`
        attempts ended since its last heartbeat are added to its `processed` count, which heartbeats
        never reset (a restarted slot keeps counting)."""
        ...

    def live_workers(self, now: int) -> list[str]:
        """Ids of workers whose heartbeat is younger than WORKER_TTL, sorted."""
        ...


def _registered(source: str) -> cached_property[Any]:
    """A script of scripts.py registered on the store's client at its first call."""
    return cached_property(lambda self: self.redis.register_script(source))


class TaskStore:
    """TaskStorage on Redis. One per process and namespace: `TaskStore.for_settings(settings)`.

    `single_threaded=True` (the functions: one invocation per environment at a time) gives the store
    a single-connection client; any other store is safe to share between threads (workers, tests)."""

    _clients: dict[tuple[str, bool], redis.Redis] = {}
    _clients_lock = threading.Lock()

    def __init__(self, settings: Settings, client: redis.Redis | None = None, *,
                 single_threaded: bool = False) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self._client = client
        self._single_threaded = single_threaded

    @cached_property
    def redis(self) -> redis.Redis:
        # Made at first use: a single-connection client connects as it is made, and a function's
        # cold start must not fail on a Redis that is down (its invocation reports that instead).
        return self._client or self.client_for(self.settings, self._single_threaded)

    _admit = _registered(scripts.ADMIT)
    _undo = _registered(scripts.UNDO_ADMIT)
    _complete = _registered(scripts.COMPLETE)
    _mark_running = _registered(scripts.MARK_RUNNING)
    _reap = _registered(scripts.REAP_WORKERS)
    _reassign = _registered(scripts.REASSIGN)
    _get_many = _registered(scripts.GET_MANY)

    @classmethod
    def for_settings(cls, settings: Settings, single_threaded: bool = False) -> TaskStore:
        return cls(settings, single_threaded=single_threaded)

    @classmethod
    def client_for(cls, settings: Settings, single_threaded: bool = False) -> redis.Redis:
        """One client per Redis URL and kind per process: Lambda environments and workers reuse it.

        A pooled client takes a connection from its pool, checks it for unread data and gives it
        back at every command; a single-connection client keeps one behind a lock: measured with
        bench/redis_client_cost.py (redis-py 8.1, hiredis), 60-120 us of client CPU per command
        instead of 105-160 us (docs/taskcore.md). But its lock is held through a blocking BLMOVE
        (a long-poll slice of up to _WAIT_SLICE), so only a store used by one thread at a time may
        have one.
        health_check_interval costs a clock read per command (a PING only after 30 s idle)."""
        key = (settings.redis_url, single_threaded)
        with cls._clients_lock:
            client = cls._clients.get(key)
            if client is None:
                client = redis.Redis.from_url(
                    settings.redis_url, socket_connect_timeout=settings.redis_timeout,
                    # Long-poll slices block up to _WAIT_SLICE; reads must outlast them.
                    socket_timeout=settings.redis_timeout + _WAIT_SLICE, health_check_interval=30,
                    single_connection_client=single_threaded)
                cls._clients[key] = client
            return client

    # Admission ----------------------------------------------------------------------------------

    def admit(self, tasks: Sequence[Task], now: int, deadline_ms: int | None = None,
              token: str | None = None) -> list[Admission]:
        if not tasks:
            return []
        token = token or uuid.uuid4().hex
        cutoff = now - int(self.settings.worker_ttl * 1000)
        # Past this, we have given up on the call (the socket timeout is longer), or our caller has
        # on us: see ADMIT.
        deadline = now_ms() + int(self.settings.redis_timeout * 1000)
        if deadline_ms is not None:
            deadline = min(deadline, deadline_ms)
        args: list[Any] = [self.keys.prefix, now, cutoff, self.settings.result_ttl,
                           self.settings.dispatch_mode, len(tasks), token, deadline, RECENT_TASKS]
        for task in tasks:
            args += [task.task_id, task.fingerprint, "1" if task.cache else "0", task.type, task.complexity,
                     json.dumps(task.payload, separators=(",", ":")),
                     self.settings.inflight_ttl_ms(task.complexity)]
        reply = self._admit(args=args)
        if reply in (b"expired", "expired"):
            raise redis.TimeoutError("the task store ran the admission after its deadline: nothing admitted")
        decided = json.loads(reply)
        return [Admission(task, Admitted(d["outcome"]), TaskStatus(d["status"]), CacheOutcome(d["cache"]),
                          d["worker_id"], d["leader"], token, d.get("result", ""))
                for task, d in zip(tasks, decided, strict=True)]

    def undo(self, admissions: Sequence[Admission], now: int) -> int:
        undoable = [a for a in admissions if a.outcome != Admitted.EXISTS]
        if not undoable:
            return 0
        args: list[Any] = [self.keys.prefix, now, self.settings.result_ttl, self.settings.done_ttl,
                           now // 60_000, len(undoable)]
        for admission in undoable:
            args += [admission.task.task_id, admission.task.fingerprint, admission.outcome]
        return int(self._undo(args=args))

    def take_turns(self, count: int) -> int:
        """Advances the round-robin cursor by `count`; returns the first of the turns taken (0-based)."""
        return int(self.redis.incrby(self.keys.rr, count)) - count

    def mark_unconfirmed(self, worker_ids: Sequence[str], seconds: float) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in worker_ids:
                pipe.set(self.keys.unconfirmed(worker_id), "1", px=int(seconds * 1000))
            pipe.execute()

    def reassign(self, task_ids: Sequence[str], worker_id: str) -> int:
        if not task_ids:
            return 0
        return int(self._reassign(args=[self.keys.prefix, worker_id, *task_ids]))

    # Completion ---------------------------------------------------------------------------------

    def complete(self, results: Sequence[TaskResult], now: int | None = None) -> list[Completion]:
        if not results:
            return []
        now = now_ms() if now is None else now
        args: list[Any] = [self.keys.prefix, self.settings.cache_ttl, self.settings.result_ttl,
                           self.settings.done_ttl, now // 60_000, len(results)]
        for r in results:
            succeeded = r.status == TaskStatus.SUCCEEDED
            args += [r.task_id, r.fingerprint, r.status,
                     json.dumps(r.result, separators=(",", ":")) if succeeded else "",
                     "" if succeeded else (r.error or ""),
                     r.worker_id, r.started_at, r.finished_at, r.attempt]
        return [Completion(outcome) for outcome in json.loads(self._complete(args=args))]

    def mark_running(self, task_id: str, worker_id: str, attempt: int, started_at: int,
                     complexity: int = 1, redelivered: bool = False, stolen_from: str = "") -> RunVerdict:
        # Quorum queues count deliveries themselves (x-delivery-limit); classic ones do not.
        limit = self.settings.delivery_limit if self.settings.queue_type == "classic" else 0
        verdict = self._mark_running(args=[
            self.keys.prefix, task_id, worker_id, started_at, attempt, self.settings.result_ttl,
            self.settings.running_ttl_ms(complexity), int(redelivered), limit, stolen_from])
        return RunVerdict(verdict.decode() if isinstance(verdict, bytes) else verdict)

    # Reading ------------------------------------------------------------------------------------

    def get(self, task_id: str) -> dict[str, Any] | None:
        return decode_record(task_id, self.redis.hgetall(self.keys.task(task_id)))

    def wait(self, task_id: str, seconds: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + max(0.0, seconds)
        done = self.keys.done(task_id)
        while True:
            record = self.get(task_id)
            left = deadline - time.monotonic()
            if record is None or record["status"] in FINAL_STATUSES or left <= 0:
                return record
            # BLMOVE from the list to itself returns the marker without consuming it, so every
            # waiter on the task wakes, not only the first (checked: the list keeps its TTL).
            self.redis.blmove(done, done, max(0.01, min(left, _WAIT_SLICE)), "RIGHT", "LEFT")

    def get_many(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not task_ids:
            return {}
        raws = json.loads(self._get_many(args=[self.keys.prefix, *task_ids]))
        records = (decode_fields(task_id, raw) for task_id, raw in zip(task_ids, raws, strict=True))
        return {record["task_id"]: record for record in records if record is not None}

    def wait_many(self, task_ids: Sequence[str], seconds: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + max(0.0, seconds)
        records = self.get_many(task_ids)
        pending = [task_id for task_id, record in records.items() if record["status"] not in FINAL_STATUSES]
        # Tasks end roughly in the order they were asked for: block on the last one still pending,
        # then re-read all that are pending in one round trip (re-reading them at every completion
        # would cost a hundred reads per task for a hundred ids).
        while pending and (left := deadline - time.monotonic()) > 0:
            done = self.keys.done(pending[-1])
            self.redis.blmove(done, done, max(0.01, min(left, _WAIT_SLICE)), "RIGHT", "LEFT")
            fresh = self.get_many(pending)
            records.update(fresh)
            pending = [task_id for task_id, record in fresh.items() if record["status"] not in FINAL_STATUSES]
        return records

    def recent(self, limit: int, status: str | None = None, task_type: str | None = None,
               ) -> list[dict[str, Any]]:
        """Up to `limit` records of the most recently submitted tasks (of the last RECENT_TASKS),
        newest first, optionally only those with this status and/or type; tasks whose record is
        gone are skipped. Records come without their payload (see _LISTED_FIELDS)."""
        task_ids = [t.decode() for t in self.redis.zrevrange(self.keys.recent, 0, -1)]
        filtered = status is not None or task_type is not None
        # Unfiltered, the first page is nearly always enough; filtered, matches may be sparse.
        page = _RECENT_PAGE if filtered else min(limit + 10, _RECENT_PAGE)
        found: list[dict[str, Any]] = []
        for start in range(0, len(task_ids), page):
            chunk = task_ids[start:start + page]
            pipe = self.redis.pipeline(transaction=False)
            for task_id in chunk:
                pipe.hmget(self.keys.task(task_id), _LISTED_FIELDS)
            for task_id, values in zip(chunk, pipe.execute(), strict=True):
                record = decode_fields(task_id, {name: value.decode() for name, value
                                                 in zip(_LISTED_FIELDS, values, strict=True)
                                                 if value is not None})
                if record is None or (status is not None and record.get("status") != status) or (
                        task_type is not None and record.get("type") != task_type):
                    continue
                found.append(record)
                if len(found) == limit:
                    return found
        return found

    # Workers ------------------------------------------------------------------------------------

    def heartbeat(self, worker_id: str, info: dict[str, Any], now: int, processed: int = 0) -> None:
        fields = {k: v if isinstance(v, str | int | float) else json.dumps(v) for k, v in info.items()}
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(self.keys.workers, {worker_id: now})
        pipe.hset(self.keys.worker(worker_id), mapping={**fields, "heartbeat_at": now})
        pipe.hincrby(self.keys.worker(worker_id), "processed", processed)
        # The self-report outlives the heartbeat long enough for GET /workers to show a dead worker.
        pipe.expire(self.keys.worker(worker_id), int(self.settings.worker_ttl * 6) + 1)
        pipe.execute()

    def live_workers(self, now: int) -> list[str]:
        cutoff = now - int(self.settings.worker_ttl * 1000)
        return sorted(w.decode() for w in self.redis.zrangebyscore(self.keys.workers, cutoff, "+inf"))

    def dead_workers(self, now: int) -> list[str]:
        cutoff = now - int(self.settings.worker_ttl * 1000)
        return sorted(w.decode() for w in self.redis.zrangebyscore(self.keys.workers, "-inf", f"({cutoff}"))

    def forget_workers(self, worker_ids: Sequence[str], now: int) -> list[str]:
        """Removes the given workers if they are still dead; returns those removed."""
        if not worker_ids:
            return []
        cutoff = now - int(self.settings.worker_ttl * 1000)
        return [w.decode() for w in self._reap(args=[self.keys.prefix, cutoff, *worker_ids])]

    def worker_report(self, now: int) -> list[dict[str, Any]]:
        """Every known worker with heartbeat age and its self-report; live ones first."""
        beats = self.redis.zrange(self.keys.workers, 0, -1, withscores=True)
        pipe = self.redis.pipeline(transaction=False)
        for worker, _ in beats:
            pipe.hgetall(self.keys.worker(worker.decode()))
            pipe.pttl(self.keys.unconfirmed(worker.decode()))
        answers = pipe.execute()
        report = []
        for (worker, beat), info, unconfirmed_ms in zip(beats, answers[::2], answers[1::2], strict=True):
            age = (now - int(beat)) / 1000
            entry: dict[str, Any] = {k.decode(): _number(v.decode()) for k, v in info.items()}
            entry.update(worker_id=worker.decode(), heartbeat_age=round(age, 3),
                         live=age < self.settings.worker_ttl)
            if unconfirmed_ms > 0:
                # Its queue did not confirm a publish: left out of the round-robin this much longer.
                entry["unconfirmed_for"] = round(unconfirmed_ms / 1000, 1)
            report.append(entry)
        return sorted(report, key=lambda e: (not e["live"], e["worker_id"]))

    # Stats --------------------------------------------------------------------------------------

    def stats(self, now: int | None = None, minutes: int = 5) -> dict[str, Any]:
        now = now_ms() if now is None else now
        minute = now // 60_000
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.stats)
        pipe.mget([self.keys.throughput(m) for m in range(minute - minutes + 1, minute + 1)])
        raw, recent = pipe.execute()
        counts = {name: 0 for name in _STAT_FIELDS}
        counts.update({k.decode(): int(v) for k, v in raw.items()})
        admitted = sum(counts[f"cache_{c}"] for c in CacheOutcome)
        finished = sum(int(v) for v in recent if v is not None)
        return {
            "tasks": {s.value: counts[s] for s in TaskStatus},
            "cache": {c.value: counts[f"cache_{c}"] for c in CacheOutcome},
            "existing_ids": counts[Admitted.EXISTS],
            "cache_hit_ratio": round(counts["cache_hit"] / admitted, 4) if admitted else 0.0,
            # Hits plus coalesced: the share of tasks that did not need their own computation.
            "cache_saved_ratio": round((counts["cache_hit"] + counts["cache_coalesced"]) / admitted, 4)
            if admitted else 0.0,
            "throughput_per_minute": round(finished / minutes, 2),
        }


# BLMOVE blocks in slices so a long wait never exceeds the socket timeout of the pool.
_WAIT_SLICE = 2.0


def decode_record(task_id: str, raw: dict[bytes, bytes]) -> dict[str, Any] | None:
    """A task hash as HGETALL returns it, decoded; None for no hash."""
    return decode_fields(task_id, {key.decode(): value.decode() for key, value in raw.items()})


def decode_fields(task_id: str, fields: dict[str, str]) -> dict[str, Any] | None:
    if not fields:
        return None
    record: dict[str, Any] = {"task_id": task_id}
    for name, text in fields.items():
        if name in _JSON_FIELDS:
            record[name] = json.loads(text)
        elif name in _INT_FIELDS:
            record[name] = int(text)
        elif name not in _HIDDEN_FIELDS:
            record[name] = text
    return record


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text

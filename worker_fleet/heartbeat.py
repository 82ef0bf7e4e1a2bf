"""The worker's heartbeat: `workers` zset + `worker:<id>` hash every HEARTBEAT_SECONDS
(docs/architecture.md §5).

It runs in a thread of its own with a Redis client of its own, so neither a long task nor a busy
connection pool can delay it past WORKER_TTL (which would make the supervisor stop routing to a
worker that is fine). It beats for the whole life of the process, also while the broker connection is
being re-established: the worker is alive, and its queue must not be reaped while it holds messages.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import redis

from taskcore.settings import Settings
from taskcore.store import TaskStore, now_ms
from worker_fleet.logs import log


class Tally:
    """Attempts ended since the last heartbeat: counted by pool threads, taken by the heartbeat, so
    that counting costs no Redis round trip per task."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, count: int = 1) -> None:
        with self._lock:
            self._count += count

    def take(self) -> int:
        with self._lock:
            count, self._count = self._count, 0
            return count


class Heartbeat:
    def __init__(self, settings: Settings, worker_id: str, info: Callable[[], dict[str, Any]],
                 processed: Tally | None = None) -> None:
        self.settings = settings
        self.processed = processed or Tally()
        self.worker_id = worker_id
        self.info = info
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout,
                                      socket_timeout=settings.redis_timeout,
                                      client_name=f"{settings.namespace}heartbeat:{worker_id}")
        self.store = TaskStore(settings, client)
        # The live workers as of the last beat, this one included (read by the connection thread,
        # which steals from their queues; replacing a tuple is atomic).
        self.live: tuple[str, ...] = ()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{worker_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.redis_timeout + 1)
        with contextlib.suppress(Exception):
            self.beat()  # the last attempts' count; a SIGKILLed worker loses at most one interval's
        self.store.redis.close()

    def beat(self) -> None:
        processed = self.processed.take()
        try:
            self.store.heartbeat(self.worker_id, self.info(), now_ms(), processed)
        except BaseException:
            self.processed.add(processed)
            raise
        if self.settings.work_stealing:
            self.live = tuple(self.store.live_workers(now_ms()))

    def _run(self) -> None:
        failing = False
        while True:
            try:
                self.beat()
                if failing:
                    log("redis_back", worker_id=self.worker_id, op="heartbeat")
                failing = False
            except Exception as error:
                # redis-py reconnects on the next command; log an outage once, not every beat. Anything
                # else is caught too: a heartbeat thread that died would get a working worker reaped.
                if not failing:
                    event = "redis_unavailable" if isinstance(error, redis.RedisError) else "heartbeat_error"
                    log(event, worker_id=self.worker_id, op="heartbeat", error=repr(error))
                failing = True
            if self._stop.wait(self.settings.heartbeat_seconds):
                return

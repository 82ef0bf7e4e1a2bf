"""The Celery peer's HTTP front: `gunicorn bench.peers.celery_app.wsgi:application`.

Submission: `execute.apply_async(args, task_id=...)` - what `.delay(*args)` does, plus the
client's task_id, which delay() cannot pass. A batch publishes in a loop of apply_async over one
producer (one pooled connection and channel) taken with app.producer_or_acquire(), as Celery's
group.apply_async does internally, without creating a group id nobody waits on.

Results: AsyncResult(task_id).state (one GET) for ?wait=0; otherwise AsyncResult.get(timeout=wait,
propagate=False), Celery's own way to wait: the Redis backend subscribes to the task's channel and
checks the stored state, so the answer comes as the result is stored, without polling. Each
gunicorn thread has its own backend (result_backend_thread_safe False, Celery's default), hence
its own pub/sub connection: Celery's result consumer is not shared between threads.

Many results without waiting (GET /results?ids=...): one MGET of the tasks' result keys through the
backend's own mget/get_key_for_task/decode_result - what the Redis backend's get_many does on each
poll, without its 0.5 s polling loop; the front waits on one pending task at a time with fetch().
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery.exceptions import TimeoutError as WaitTimeout
from celery.result import AsyncResult

from bench.peers.celery_app.app import app, env, execute
from bench.peers.common import failed, succeeded
from bench.peers.front import KnownIds, make_app
from taskcore.messages import TaskSpec


class CeleryBackend:
    def submit(self, specs: Sequence[TaskSpec]) -> None:
        if len(specs) == 1:
            spec = specs[0]
            execute.apply_async((spec.type, spec.payload, spec.complexity), task_id=spec.task_id)
            return
        with app.producer_or_acquire() as producer:
            for spec in specs:
                execute.apply_async((spec.type, spec.payload, spec.complexity), task_id=spec.task_id,
                                    producer=producer)

    def fetch(self, task_id: str, wait: float) -> dict[str, Any] | None:
        result = AsyncResult(task_id, app=app)
        if wait > 0:
            try:
                result.get(timeout=wait, propagate=False, disable_sync_subtasks=False)
            except WaitTimeout:
                return None
        return _record(task_id, result.state, result.result)

    def fetch_many(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not task_ids:
            return {}
        backend = app.backend  # the thread's own (result_backend_thread_safe False)
        values = backend.mget([backend.get_key_for_task(task_id) for task_id in task_ids])
        records = {}
        for task_id, value in zip(task_ids, values, strict=True):
            if value is not None:
                # decode_result turns a stored failure back into the exception, as AsyncResult.result does
                meta = backend.decode_result(value)
                record = _record(task_id, meta["status"], meta["result"])
                if record is not None:
                    records[task_id] = record
        return records


def _record(task_id: str, state: str, result: Any) -> dict[str, Any] | None:
    if state == "SUCCESS":
        return succeeded(task_id, result)
    if state in ("FAILURE", "REVOKED"):
        return failed(task_id, str(result))
    return None


application = make_app(CeleryBackend(), KnownIds(env.redis_url, env.key_prefix, env.result_ttl))

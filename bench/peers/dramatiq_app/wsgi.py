"""The Dramatiq peer's HTTP front: `gunicorn bench.peers.dramatiq_app.wsgi:application`.

Submission: `broker.enqueue(execute.message(*args).copy(message_id=task_id))` - what
`execute.send(*args)` does, with the client's task_id as the message id. A batch is a loop of
enqueue on the thread's broker channel (what dramatiq.group(...).run() does).

Results: message.get_result(backend=..., block=True, timeout=...) - a blocking BRPOPLPUSH on the
result key. RedisBackend counts that timeout in whole seconds, so ?wait=S waits floor(S) seconds
(a wait below 1 s answers at once).

Many results without waiting (GET /results?ids=...): RedisBackend keeps each result as a one-item
list (LPUSH, so that a waiter can BRPOPLPUSH it), so MGET cannot read them: one pipeline of LINDEX
key 0 - what get_result(block=False) sends - under the backend's build_message_key, decoded with its
encoder and unwrap_result, as get_result does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dramatiq import Message
from dramatiq.results import ResultFailure, ResultMissing, ResultTimeout

from bench.peers.common import failed, succeeded
from bench.peers.dramatiq_app.actors import ACTOR_NAME, backend, broker, env, execute
from bench.peers.front import KnownIds, make_app
from taskcore.messages import TaskSpec


class DramatiqBackend:
    def submit(self, specs: Sequence[TaskSpec]) -> None:
        for spec in specs:
            message = execute.message(spec.type, spec.payload, spec.complexity)
            broker.enqueue(message.copy(message_id=spec.task_id))

    def fetch(self, task_id: str, wait: float) -> dict[str, Any] | None:
        block = wait >= 1
        try:
            result = _message(task_id).get_result(backend=backend, block=block, timeout=int(wait * 1000))
        except (ResultMissing, ResultTimeout):
            return None
        except ResultFailure as failure:
            return failed(task_id, failure.orig_exc_msg)
        return succeeded(task_id, result)

    def fetch_many(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not task_ids:
            return {}
        with backend.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.lindex(backend.build_message_key(_message(task_id)), 0)
            values = pipe.execute()
        records = {}
        for task_id, data in zip(task_ids, values, strict=True):
            if data is None:
                continue
            try:
                records[task_id] = succeeded(task_id, backend.unwrap_result(backend.encoder.decode(data)))
            except ResultFailure as failure:
                records[task_id] = failed(task_id, failure.orig_exc_msg)
        return records


def _message(task_id: str) -> Message[Any]:
    """A stand-in for the task's message: the result key needs only its queue, actor and id."""
    return Message(queue_name=env.queue, actor_name=ACTOR_NAME, args=(), kwargs={}, options={},
                   message_id=task_id)


application = make_app(DramatiqBackend(), KnownIds(env.redis_url, env.key_prefix, env.result_ttl))

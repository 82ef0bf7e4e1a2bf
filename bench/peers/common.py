"""What both peers share: their environment, the task body, and the result record's shape.

The work is ours exactly: sleep complexity x TASK_UNIT_SECONDS, then taskcore.registry.execute.
Everything a peer process needs comes from environment variables that bench.peers.run sets:

    PEER_BROKER_URL   amqp URL (default guest@127.0.0.1:5672, vhost /)
    PEER_REDIS_URL    results/markers DB (default db 5 for celery, 6 for dramatiq)
    PEER_QUEUE        the peer's own queue name (unique per start, so concurrent runs never meet)
    PEER_KEY_PREFIX   prefix of every Redis key the peer writes (deleted by PeerHandle.stop)
    PEER_RESULT_TTL   seconds a result is kept (default 3600)
    PEER_WORKERS      worker processes, PEER_THREADS threads each: workers x threads concurrency slots
                      (Dramatiq: processes x threads; Celery's prefork runs one task per process, so it
                      gets workers x threads processes - the same number of slots)
    TASK_UNIT_SECONDS seconds of sleep per unit of complexity (default 1.0; the benchmark sets 0)
    PEER_CONFIRM      "1": publish with broker confirms (a 202 then means the broker has the task, as
                      ours does); default "0", the peer's own default (no confirms)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from taskcore import registry

DEFAULT_REDIS_DB = {"celery": 5, "dramatiq": 6}
# Slots per worker process by default: Celery's prefork runs one task per process (its default
# concurrency is one process per core); Dramatiq's CLI default is 8 threads per process.
DEFAULT_THREADS = {"celery": 1, "dramatiq": 8}


@dataclass(frozen=True)
class PeerEnv:
    broker_url: str
    redis_url: str
    queue: str
    key_prefix: str
    result_ttl: int
    workers: int
    threads: int
    unit_seconds: float
    confirm: bool = False

    @property
    def slots(self) -> int:
        """Tasks that can run at once: what matters when tasks sleep."""
        return self.workers * self.threads

    @classmethod
    def from_env(cls, name: str) -> PeerEnv:
        env = os.environ
        return cls(
            broker_url=env.get("PEER_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
            redis_url=env.get("PEER_REDIS_URL", f"redis://127.0.0.1:6379/{DEFAULT_REDIS_DB[name]}"),
            queue=env.get("PEER_QUEUE", f"peer-{name}"),
            key_prefix=env.get("PEER_KEY_PREFIX", f"peer-{name}:"),
            result_ttl=int(env.get("PEER_RESULT_TTL", "3600")),
            workers=int(env.get("PEER_WORKERS", "2")),
            threads=int(env.get("PEER_THREADS", str(DEFAULT_THREADS[name]))),
            unit_seconds=float(env.get("TASK_UNIT_SECONDS", "1.0")),
            confirm=env.get("PEER_CONFIRM", "0") == "1",
        )


def run_task(task_type: str, payload: dict[str, Any], complexity: int, unit_seconds: float) -> Any:
    """The task body both peers run; raises taskcore.work.TaskFailed for the task's own failure."""
    if complexity * unit_seconds > 0:
        time.sleep(complexity * unit_seconds)
    return registry.execute(task_type, payload)


def succeeded(task_id: str, result: Any) -> dict[str, Any]:
    return {"task_id": task_id, "status": "succeeded", "result": result}


def failed(task_id: str, error: str) -> dict[str, Any]:
    return {"task_id": task_id, "status": "failed", "error": error}

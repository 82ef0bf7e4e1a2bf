"""The Celery 5 app and its one task, configured for many short tasks as Celery's "Optimizing" guide
and configuration reference recommend. Worker (started by bench.peers.run):

    celery -A bench.peers.celery_app.app worker --pool prefork --concurrency $PEER_WORKERS \
        --without-gossip --without-mingle --without-heartbeat --loglevel WARNING

settings.py holds the whole configuration (SETTINGS here), printed as is by the benchmark.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from bench.peers.celery_app.settings import TASK_OPTIONS, celery_settings
from bench.peers.common import PeerEnv, run_task

env = PeerEnv.from_env("celery")

SETTINGS = celery_settings(env)

app = Celery("peer_celery")
app.conf.update(SETTINGS)


@app.task(**TASK_OPTIONS)
def execute(task_type: str, payload: dict[str, Any], complexity: int) -> Any:
    return run_task(task_type, payload, complexity, env.unit_seconds)

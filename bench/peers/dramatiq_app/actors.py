"""The Dramatiq 2 broker, result backend and the one actor; settings.py states the configuration.
Worker (started by bench.peers.run):

    dramatiq bench.peers.dramatiq_app.actors --processes $PEER_WORKERS --threads $PEER_THREADS
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.peers.common import PeerEnv, run_task
from bench.peers.dramatiq_app.settings import ACTOR_NAME, dramatiq_settings
from taskcore.work import TaskFailed

env = PeerEnv.from_env("dramatiq")
SETTINGS = dramatiq_settings(env)

broker = RabbitmqBroker(url=env.broker_url, confirm_delivery=SETTINGS["confirm_delivery"])
backend = RedisBackend(url=env.redis_url, namespace=SETTINGS["results_namespace"],
                       use_namespace_prefix_keys=SETTINGS["use_namespace_prefix_keys"])
broker.add_middleware(Results(backend=backend, result_ttl=SETTINGS["result_ttl_ms"]))
dramatiq.set_broker(broker)


# throws: TaskFailed is the task's expected failure (the "fail" type): no traceback, no retry.
@dramatiq.actor(actor_name=ACTOR_NAME, queue_name=env.queue, store_results=True,
                max_retries=SETTINGS["max_retries"], throws=(TaskFailed,))
def execute(task_type: str, payload: dict[str, Any], complexity: int) -> Any:
    return run_task(task_type, payload, complexity, env.unit_seconds)

"""The Celery peer's whole configuration (app.conf is celery_settings(env), plus TASK_OPTIONS on the
task), with no import side effects, so that the benchmark can print it without creating an app.
Celery's "Optimizing" guide and its configuration reference are the sources of each choice.
"""

from __future__ import annotations

from typing import Any

from bench.peers.common import PeerEnv
from taskcore.work import TaskFailed

# The task's options: throws marks TaskFailed (the "fail" type) as an expected failure, logged
# without a traceback. No retries (Celery's default: a task retries only if it asks to).
TASK_OPTIONS: dict[str, Any] = {"name": "peer.execute", "throws": (TaskFailed,)}


def celery_settings(env: PeerEnv) -> dict[str, Any]:
    return {
        # Broker: RabbitMQ through py-amqp ("amqp://"); librabbitmq, which the guide suggests, has no
        # wheels for current Pythons. Persistent messages (Celery's default, delivery_mode 2) and no
        # publisher confirms (the default): the same durability as a plain Celery install; with
        # PEER_CONFIRM, py-amqp's confirm_publish (each publish waits for its confirm).
        "broker_url": env.broker_url,
        "broker_transport_options": {"confirm_publish": env.confirm},
        "task_default_delivery_mode": "persistent",
        # Pool of broker connections for publishing, sized to the front's threads (Optimizing guide:
        # "based on the number of active threads ... using broker connections").
        "broker_pool_limit": 32,
        "broker_connection_retry_on_startup": True,
        # Own queue per start (exchange and routing key default to the queue's name).
        "task_default_queue": env.queue,
        # Results: Redis backend, JSON, results kept PEER_RESULT_TTL seconds (bounds Redis memory),
        # all keys under the peer's prefix. One backend per thread (result_backend_thread_safe False,
        # the default): the front waits with AsyncResult.get(), whose pub/sub consumer is per backend.
        "result_backend": env.redis_url,
        "result_backend_transport_options": {"global_keyprefix": env.key_prefix},
        "result_backend_thread_safe": False,
        "redis_max_connections": 64,
        "result_expires": env.result_ttl,
        "task_ignore_result": False,  # results are the point: GET /results/{id} reads them
        "result_extended": False,  # no args/name/worker stored with each result: smaller writes
        "task_track_started": False,  # no STARTED write per task (so no "running" status, as documented)
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # Worker: prefork pool (Celery's default; CPU-bound tasks would share one GIL in threads),
        # one task per process, so as many processes as the other systems have slots (workers x
        # threads). Many short tasks -> a large prefetch multiplier ("Say 64, or 128"), early acks
        # (the default; acks_late + multiplier 1 is the guide's advice for *long* tasks).
        "worker_pool": "prefork",
        "worker_concurrency": env.slots,
        "worker_prefetch_multiplier": 64,
        "task_acks_late": False,
        "worker_disable_rate_limits": True,  # no rate limits used: skip the token-bucket bookkeeping
        # No events, no remote control (no pidbox queue), and --without-gossip/mingle/heartbeat on the
        # command line: nothing on the broker but the tasks themselves.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_enable_remote_control": False,
        "worker_hijack_root_logger": False,
    }

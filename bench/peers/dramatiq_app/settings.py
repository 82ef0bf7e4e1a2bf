"""The Dramatiq peer's configuration, as a function of its environment (no import side effects, so
the benchmark can print it without creating a broker). Dramatiq's user guide and API reference are
the sources of each choice.
"""

from __future__ import annotations

from typing import Any

from bench.peers.common import PeerEnv

ACTOR_NAME = "peer_execute"


def dramatiq_settings(env: PeerEnv) -> dict[str, Any]:
    return {
        # Broker: RabbitmqBroker (pika), persistent messages on a durable queue (Dramatiq's defaults),
        # no publisher confirms (confirm_delivery=False, the default) unless PEER_CONFIRM asks for
        # them. Own queue per start; Dramatiq adds <queue>.DQ (delays) and <queue>.XQ (dead letters).
        "broker": "RabbitmqBroker",
        "broker_url": env.broker_url,
        "confirm_delivery": env.confirm,
        "queue_name": env.queue,
        "actor_name": ACTOR_NAME,
        # Results: the Results middleware with RedisBackend, which the docs recommend ("waiting for a
        # result is resource efficient": a blocking BRPOPLPUSH, no polling). Keys under the peer's
        # prefix (use_namespace_prefix_keys), kept PEER_RESULT_TTL seconds.
        "result_backend": "RedisBackend",
        "redis_url": env.redis_url,
        "results_namespace": f"{env.key_prefix}results",
        "use_namespace_prefix_keys": True,
        "store_results": True,
        "result_ttl_ms": env.result_ttl * 1000,
        # Retries: off (max_retries=0). Our tasks fail deterministically; Dramatiq's default of 20
        # retries with exponential backoff would delay every "fail" result by minutes.
        "max_retries": 0,
        "throws": "taskcore.work.TaskFailed",  # the expected failure: no traceback logged
        # Worker: the CLI's model, N processes x T threads; Dramatiq's defaults are one process per
        # core and 8 threads. Prefetch per process: dramatiq_queue_prefetch, default 2 x threads (kept).
        "processes": env.workers,
        "threads": env.threads,
        "queue_prefetch": 2 * env.threads,
        "middleware": "Dramatiq's defaults (AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, "
                      "Pipelines, Retries) + Results",
    }

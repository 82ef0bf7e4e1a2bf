"""Settings of the task system, read once from the environment (defaults match infra/local.env)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

DISPATCH_MODES = ("round_robin", "shared")
# The work queues' type (taskcore.rabbitmq.topology): RabbitMQ's quorum queues, or classic queues
# (version 2, durable) whose deliveries the worker counts itself (docs/taskcore.md).
QUEUE_TYPES = ("quorum", "classic")


class SettingsError(ValueError):
    """An environment variable holds a value the system cannot run with."""


@dataclass(frozen=True)
class Settings:
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = ""
    task_unit_seconds: float = 1.0
    result_ttl: int = 86_400
    cache_ttl: int = 3_600
    max_batch: int = 500
    max_body_bytes: int = 1 << 20
    max_attempts: int = 3
    heartbeat_seconds: float = 2.0
    worker_ttl: float = 10.0
    # None: the limit grows with complexity (see time_limit), so a long task is not cut short.
    task_time_limit: float | None = None
    dispatch_mode: str = "round_robin"
    supervisor_url: str = ""
    supervisor_timeout: float = 10.0
    # Extra life of inflight:<fp> beyond the time limits, covering the time a leader waits in a queue.
    inflight_margin: float = 600.0
    # A task message is dead-lettered after this many redeliveries (a poison message): by the broker
    # (x-delivery-limit) on quorum queues, by the worker's count on classic ones.
    delivery_limit: int = 5
    queue_type: str = "quorum"
    # How long a "done" wake-up marker lives; long enough for any long-poll to see it.
    done_ttl: int = 120
    redis_timeout: float = 5.0
    broker_timeout: float = 10.0
    # A worker takes up to concurrency x this from its own queue. Above 1, short tasks settle in
    # groups whose results share one broker confirm (the benchmark runs with 4, Celery's default),
    # but a worker that hangs holds that many tasks until the broker drops its connection, out of
    # the janitor's reach. From the shared queue it always takes only `concurrency`.
    prefetch_multiplier: int = 1
    # A worker with a slot idle takes tasks queued for busy workers (docs/worker_fleet.md, "Work
    # stealing"); the round-robin still decides where each goes first. Off: each waits for its own.
    work_stealing: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `environ` (default os.environ); an empty variable means "use the default",
        except NAMESPACE and SUPERVISOR_URL whose default is empty anyway."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(field.name.upper())
            if raw is None or (raw.strip() == "" and field.name not in ("namespace", "supervisor_url")):
                continue
            values[field.name] = _parse(field.name, field.type, raw.strip())
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.dispatch_mode not in DISPATCH_MODES:
            raise SettingsError(f"DISPATCH_MODE must be one of {DISPATCH_MODES}, not {self.dispatch_mode!r}")
        if self.queue_type not in QUEUE_TYPES:
            raise SettingsError(f"QUEUE_TYPE must be one of {QUEUE_TYPES}, not {self.queue_type!r}")
        for name in ("result_ttl", "cache_ttl", "max_batch", "max_body_bytes", "max_attempts",
                     "worker_ttl", "heartbeat_seconds", "delivery_limit", "done_ttl", "prefetch_multiplier"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be positive")
        if self.task_unit_seconds < 0:
            raise SettingsError("TASK_UNIT_SECONDS must not be negative")

    def time_limit(self, complexity: int) -> float:
        """Seconds one attempt of a task may run before the worker fails it."""
        if self.task_time_limit is not None:
            return self.task_time_limit
        return complexity * self.task_unit_seconds * 3 + 30

    def inflight_ttl_ms(self, complexity: int) -> int:
        """Life of inflight:<fp> at admission: every attempt may use its whole time limit, and the
        leader may wait in a queue first. Expiry only re-opens the fingerprint to a new leader, so
        erring long costs nothing but a late duplicate computation."""
        seconds = self.time_limit(complexity) * self.max_attempts + self.inflight_margin
        return math.ceil(seconds * 1000)

    def running_ttl_ms(self, complexity: int) -> int:
        """Life of inflight:<fp> refreshed when an attempt starts: this attempt, retries and slack."""
        remaining = self.time_limit(complexity) * self.max_attempts + 60
        return math.ceil(remaining * 1000)


def _parse(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    if "bool" in kind:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name.upper()}={raw!r} is not a yes/no value (1/0, true/false, on/off)")
    try:
        if "int" in kind and "float" not in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
    except ValueError as error:
        raise SettingsError(f"{name.upper()}={raw!r} is not a number") from error
    return raw

from __future__ import annotations

import pytest

from taskcore.settings import Settings, SettingsError


def test_defaults_match_local_env() -> None:
    s = Settings.from_env({})
    assert s.rabbitmq_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.namespace == ""
    assert (s.task_unit_seconds, s.result_ttl, s.cache_ttl) == (1.0, 86_400, 3_600)
    assert (s.max_batch, s.max_body_bytes, s.max_attempts) == (500, 1 << 20, 3)
    assert (s.heartbeat_seconds, s.worker_ttl) == (2.0, 10.0)
    assert s.dispatch_mode == "round_robin"
    assert s.task_time_limit is None
    assert (s.queue_type, s.delivery_limit) == ("quorum", 5)


def test_environment_overrides_and_types() -> None:
    s = Settings.from_env({"NAMESPACE": "x:", "TASK_UNIT_SECONDS": "0", "RESULT_TTL": "5",
                           "TASK_TIME_LIMIT": "2.5", "DISPATCH_MODE": "shared", "MAX_BATCH": " 7 ",
                           "CACHE_TTL": "", "QUEUE_TYPE": "classic"})
    assert s.namespace == "x:"
    assert s.task_unit_seconds == 0.0
    assert s.result_ttl == 5 and isinstance(s.result_ttl, int)
    assert s.time_limit(10) == 2.5
    assert s.dispatch_mode == "shared"
    assert s.max_batch == 7
    assert s.cache_ttl == 3_600  # empty means default
    assert s.queue_type == "classic"


def test_time_limit_grows_with_complexity() -> None:
    s = Settings.from_env({})
    assert s.time_limit(1) == 33
    assert s.time_limit(10) == 60
    # inflight covers every attempt plus the queue margin
    assert s.inflight_ttl_ms(10) == (60 * 3 + 600) * 1000
    assert s.running_ttl_ms(1) == (33 * 3 + 60) * 1000


@pytest.mark.parametrize("env", [{"DISPATCH_MODE": "random"}, {"RESULT_TTL": "0"}, {"MAX_BATCH": "many"},
                                 {"QUEUE_TYPE": "stream"}])
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.namespace = "y"  # type: ignore[misc]


def test_yes_no_settings() -> None:
    assert Settings.from_env({}).work_stealing is True
    for raw, value in (("off", False), ("0", False), ("No", False), ("on", True), ("1", True),
                       ("TRUE", True)):
        assert Settings.from_env({"WORK_STEALING": raw}).work_stealing is value, raw
    with pytest.raises(SettingsError, match="WORK_STEALING"):
        Settings.from_env({"WORK_STEALING": "sometimes"})

"""The fleet's pure parts, without services."""

from __future__ import annotations

import json

import pytest

from taskcore.backoff import MAX_TASK_RETRY_SECONDS
from taskcore.keys import Keys
from taskcore.messages import MessageError, Task, validate_task
from taskcore.rabbitmq.topology import retry_delay_ms, retry_delays_ms
from taskcore.settings import Settings
from worker_fleet.__main__ import parser
from worker_fleet.fleet import default_id_prefix, worker_ids
from worker_fleet.jobs import parse_task
from worker_fleet.outcomes import next_attempt, should_retry


def test_retry_delays_double_from_one_task_unit_with_a_floor_and_a_cap() -> None:
    fast = Settings(task_unit_seconds=0.0)
    assert [retry_delay_ms(fast, n) for n in (1, 2, 3)] == [100, 200, 400]
    normal = Settings(task_unit_seconds=1.0, max_attempts=3)
    assert retry_delays_ms(normal) == [1000, 2000]
    assert retry_delay_ms(Settings(task_unit_seconds=5.0), 10) == MAX_TASK_RETRY_SECONDS * 1000
    assert Keys("t1:").retry_queue(200) == "t1:tasks.retry.200ms"


def test_retry_only_while_attempts_remain_and_the_failure_is_retryable() -> None:
    settings = Settings(max_attempts=3)
    assert should_retry(settings, 1, True) and should_retry(settings, 2, True)
    assert not should_retry(settings, 3, True)
    assert not should_retry(settings, 1, False)
    task = Task.from_spec(validate_task({"type": "fail"}).with_id("a"), 1)
    assert next_attempt(task, 2).attempt == 2 and task.attempt == 0


def test_parse_task_accepts_a_task_and_rejects_what_must_be_dead_lettered() -> None:
    task = Task.from_spec(validate_task({"type": "primes", "payload": {"n": 10}}).with_id("a"), 1)
    assert parse_task(task.to_json()) == task
    fields = json.loads(task.to_json())
    for body in (b"", b"null", b"{}", json.dumps({**fields, "complexity": 0}).encode(),
                 json.dumps({**fields, "attempt": -1}).encode(),
                 json.dumps({**fields, "payload": {"n": "ten"}}).encode()):
        with pytest.raises(MessageError):
            parse_task(body)


def test_worker_ids_are_stable_per_slot_and_safe_in_queue_names() -> None:
    assert worker_ids("host", 3) == ["host-0", "host-1", "host-2"]
    prefix = default_id_prefix()
    assert prefix and all(c.isalnum() or c in "-_" for c in prefix)
    args = parser().parse_args(["--workers", "2", "--concurrency", "3", "--id-prefix", "a.b"])
    assert (args.workers, args.concurrency, args.id_prefix, args.worker_id) == (2, 3, "a.b", None)
    with pytest.raises(SystemExit):
        parser().parse_args(["--id-prefix", "bad id"])
    with pytest.raises(SystemExit):
        parser().parse_args(["--workers", "0"])
    with pytest.raises(SystemExit):
        parser().parse_args(["--worker-id", "shared"])

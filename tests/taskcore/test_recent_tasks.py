"""The recent-tasks index (written by ADMIT, read by TaskStore.recent for GET /tasks) against the
real Redis, and the validation of the route's query."""

from __future__ import annotations

import pytest

from taskcore.dispatch import DEFAULT_RECENT_LIMIT, parse_recent_query, recent_tasks
from taskcore.keys import Keys
from taskcore.messages import Task, TaskResult, TaskSpec, ValidationError
from taskcore.store import RECENT_TASKS, TaskStore
from tests.taskcore.conftest import Namespace

NOW = 1_700_000_000_000


def task(task_id: str, n: int = 10, task_type: str = "primes") -> Task:
    payload = {"n": n} if task_type == "primes" else {"data": str(n)}
    return Task.from_spec(TaskSpec(task_type, payload, 1, task_id, True), NOW)


def done(t: Task, status: str = "succeeded") -> TaskResult:
    if status == "succeeded":
        return TaskResult(t.task_id, t.fingerprint, status, "w1", NOW + 1, NOW + 2, 1, result=4)
    return TaskResult(t.task_id, t.fingerprint, status, "w1", NOW + 1, NOW + 2, 1, error="boom")


def ids(records: list[dict]) -> list[str]:
    return [record["task_id"] for record in records]


def test_the_index_key_is_namespaced() -> None:
    assert Keys("t1:").recent == "t1:recent"


def test_newest_first_across_calls_and_in_batch_order(store: TaskStore, ns: Namespace) -> None:
    store.admit([task("a", 1)], NOW)
    store.admit([task("b", 2), task("c", 3), task("d", 4)], NOW + 5)  # one batch, one timestamp
    store.admit([task("e", 5)], NOW + 9)
    assert ids(store.recent(10)) == ["e", "d", "c", "b", "a"]
    assert ids(store.recent(2)) == ["e", "d"]
    # Scored by submission time (ms) x 1000 + position in the call, exactly.
    assert store.redis.zscore(ns.keys.recent, "c") == (NOW + 5) * 1000 + 1


def test_records_are_listed_without_their_payload(store: TaskStore) -> None:
    t = task("a", 7)
    store.admit([t], NOW)
    store.complete([done(t)], NOW + 3)
    [record] = store.recent(5)
    assert "payload" not in record and "admission" not in record
    assert record == {k: v for k, v in store.get("a").items() if k != "payload"}
    assert (record["status"], record["type"], record["result"], record["submitted_at"]) == (
        "succeeded", "primes", 4, NOW)


def test_filters_by_state_and_type(store: TaskStore) -> None:
    tasks = [task("p1", 1), task("p2", 2), task("h1", 1, "hash"), task("p3", 3), task("h2", 2, "hash")]
    for offset, t in enumerate(tasks):
        store.admit([t], NOW + offset)
    store.complete([done(tasks[0]), done(tasks[2]), done(tasks[3], "failed")], NOW + 10)
    assert ids(store.recent(10, status="succeeded")) == ["h1", "p1"]
    assert ids(store.recent(10, status="failed")) == ["p3"]
    assert ids(store.recent(10, status="queued")) == ["h2", "p2"]
    assert ids(store.recent(10, status="running")) == []
    assert ids(store.recent(10, task_type="hash")) == ["h2", "h1"]
    assert ids(store.recent(10, status="succeeded", task_type="primes")) == ["p1"]
    assert ids(store.recent(1, task_type="primes")) == ["p3"]


def test_a_sparse_filter_reads_past_the_first_pages(store: TaskStore) -> None:
    oldest = task("oldest", 1)
    store.admit([oldest], NOW)
    store.complete([done(oldest, "failed")], NOW + 1)
    store.admit([task(f"t{i}", 100 + i) for i in range(350)], NOW + 2)
    assert ids(store.recent(5, status="failed")) == ["oldest"]
    assert len(store.recent(100)) == 100


def test_the_index_is_capped_and_has_a_ttl(store: TaskStore, ns: Namespace) -> None:
    store.admit([task(f"t{i}", 1000 + i) for i in range(RECENT_TASKS + 25)], NOW)
    assert store.redis.zcard(ns.keys.recent) == RECENT_TASKS
    listed = store.recent(100)
    assert ids(listed)[:2] == [f"t{RECENT_TASKS + 24}", f"t{RECENT_TASKS + 23}"]
    assert store.redis.zscore(ns.keys.recent, "t0") is None  # the oldest were trimmed
    assert store.redis.zscore(ns.keys.recent, "t25") is not None
    assert 0 < store.redis.pttl(ns.keys.recent) <= store.settings.result_ttl * 1000 + \
        store.settings.inflight_ttl_ms(1)


def test_resubmitted_ids_are_not_listed_twice(store: TaskStore) -> None:
    store.admit([task("a", 1)], NOW)
    store.admit([task("b", 2)], NOW + 1)
    assert [x.outcome for x in store.admit([task("a", 1)], NOW + 2)] == ["exists"]
    assert ids(store.recent(10)) == ["b", "a"]


def test_undone_and_expired_tasks_are_not_listed(store: TaskStore, ns: Namespace) -> None:
    store.admit([task("kept", 1)], NOW)
    store.admit([task("expired", 2)], NOW + 1)
    undone = store.admit([task("undone", 3)], NOW + 2)
    store.undo(undone, NOW + 3)
    assert store.redis.zscore(ns.keys.recent, "undone") is None  # the undo took it out
    store.redis.delete(ns.keys.task("expired"))  # what its TTL does
    assert ids(store.recent(10)) == ["kept"]


def test_an_empty_index_lists_nothing(store: TaskStore) -> None:
    assert store.recent(20) == []
    assert store.recent(20, status="failed", task_type="hash") == []


def test_recent_tasks_applies_the_query(store: TaskStore) -> None:
    for i in range(DEFAULT_RECENT_LIMIT + 5):
        store.admit([task(f"t{i}", 10 + i)], NOW + i)
    assert len(recent_tasks(store, None)["tasks"]) == DEFAULT_RECENT_LIMIT
    assert ids(recent_tasks(store, {"limit": "3", "state": "queued", "type": "primes"})["tasks"]) == [
        "t24", "t23", "t22"]


def test_query_defaults_and_values() -> None:
    assert parse_recent_query(None) == (DEFAULT_RECENT_LIMIT, None, None)
    assert parse_recent_query({"limit": "100", "state": "failed", "type": "hash"}) == (100, "failed", "hash")
    assert parse_recent_query({"limit": "001"}) == (1, None, None)


@pytest.mark.parametrize(("query", "code"), [
    ({"limit": "0"}, "invalid_limit"),
    ({"limit": "101"}, "invalid_limit"),
    ({"limit": "-1"}, "invalid_limit"),
    ({"limit": "1e2"}, "invalid_limit"),
    ({"limit": ""}, "invalid_limit"),
    ({"limit": "9" * 5000}, "invalid_limit"),
    ({"limit": "٣"}, "invalid_limit"),  # a digit, but not an ASCII one
    ({"state": "done"}, "invalid_state"),
    ({"state": ""}, "invalid_state"),
    ({"type": "nope"}, "unknown_type"),
    ({"status": "failed"}, "unknown_parameter"),
])
def test_bad_queries_are_refused(query: dict[str, str], code: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_recent_query(query)
    assert caught.value.code == code

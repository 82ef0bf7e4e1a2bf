"""TaskStore and its Lua scripts against the real Redis."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import redis

from taskcore.messages import Task, TaskResult, TaskSpec
from taskcore.settings import Settings
from taskcore.states import Admitted, CacheOutcome, Completion, RunVerdict, TaskStatus
from taskcore.store import TaskStore
from tests.taskcore.conftest import Namespace, count_keys, make_settings

NOW = 1_700_000_000_000


def task(task_id: str, n: int = 10, cache: bool = True, complexity: int = 1) -> Task:
    return Task.from_spec(TaskSpec("primes", {"n": n}, complexity, task_id, cache), NOW)


def result(t: Task, status: str = "succeeded", value: object = 4, worker: str = "w1") -> TaskResult:
    if status == "succeeded":
        return TaskResult(t.task_id, t.fingerprint, status, worker, NOW + 1, NOW + 2, 1, result=value)
    return TaskResult(t.task_id, t.fingerprint, status, worker, NOW + 1, NOW + 2, 3, error="TaskFailed: boom")


def beat(store: TaskStore, *workers: str, at: int = NOW) -> None:
    for worker in workers:
        store.heartbeat(worker, {"host": "h", "pid": 1, "concurrency": 2, "in_flight": 0, "processed": 5}, at)


# Admission ---------------------------------------------------------------------------------------

def test_leader_then_coalesced_then_hit(store: TaskStore, ns: Namespace) -> None:
    beat(store, "w1")
    a, b, c = task("a"), task("b"), task("c")
    [leader] = store.admit([a], NOW)
    assert (leader.outcome, leader.status, leader.cache, leader.worker_id) == (
        "dispatch", "queued", "miss", "w1")
    # The scripts' words come back as taskcore.states members, not bare strings.
    assert (leader.outcome, leader.status, leader.cache) == (Admitted.DISPATCH, TaskStatus.QUEUED,
                                                             CacheOutcome.MISS)
    assert all(type(word) is kind for word, kind in ((leader.outcome, Admitted), (leader.status, TaskStatus),
                                                     (leader.cache, CacheOutcome)))
    assert store.redis.get(ns.keys.inflight(a.fingerprint)) == b"a"
    pttl = store.redis.pttl(ns.keys.inflight(a.fingerprint))
    assert 0 < pttl <= store.settings.inflight_ttl_ms(1)

    [follower] = store.admit([b], NOW)
    assert (follower.outcome, follower.status, follower.cache, follower.leader) == ("coalesced", "queued",
                                                                                   "coalesced", "a")
    assert follower.worker_id == "w1"
    assert store.redis.smembers(ns.keys.followers(a.fingerprint)) == {b"b"}
    assert store.get("b")["leader"] == "a"

    [completed] = store.complete([result(a)], NOW + 3)
    assert completed == "completed" and completed is Completion.COMPLETED
    [hit] = store.admit([c], NOW + 4)
    assert (hit.outcome, hit.status, hit.cache) == ("hit", "succeeded", "hit")
    assert hit.reply()["result"] == 4 and "result" not in leader.reply()  # a hit answers with its result
    record = store.get("c")
    assert record["result"] == 4 and record["status"] == "succeeded"
    assert 0 < store.redis.ttl(ns.keys.task("c")) <= store.settings.result_ttl


def test_admission_run_after_its_deadline_changes_nothing(store: TaskStore, ns: Namespace,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis that froze runs the ADMIT it had received when it resumes, after the caller gave up
    and answered 503: the script sees its deadline passed (Redis's clock) and admits nothing."""
    import taskcore.store

    beat(store, "w1")
    monkeypatch.setattr(taskcore.store, "now_ms", lambda: 0)  # a deadline long gone
    with pytest.raises(redis.TimeoutError):
        store.admit([task("late")], NOW)
    assert store.get("late") is None
    assert [k for k in count_keys(ns.keys.prefix) if b"worker" not in k] == []  # no record, claim or count


def test_bypass_neither_reads_nor_coalesces_nor_writes_the_cache(store: TaskStore, ns: Namespace) -> None:
    a = task("a")
    store.admit([a], NOW)
    store.complete([result(a, value=4)], NOW)
    b = task("b", cache=False)
    [bypass] = store.admit([b], NOW)
    assert (bypass.outcome, bypass.cache, bypass.worker_id) == ("dispatch", "bypass", "shared")
    assert store.redis.get(ns.keys.inflight(b.fingerprint)) is None
    store.redis.delete(ns.keys.result(a.fingerprint))
    assert store.complete([result(b, value=4)], NOW) == ["completed"]
    assert store.redis.get(ns.keys.result(b.fingerprint)) is None
    assert store.get("b")["result"] == 4


def test_bypass_while_a_leader_runs_does_not_resolve_its_followers(store: TaskStore) -> None:
    leader, follower, bypass = task("l"), task("f"), task("x", cache=False)
    store.admit([leader, follower, bypass], NOW)
    store.complete([result(bypass)], NOW)
    assert store.get("f")["status"] == "queued"
    store.complete([result(leader)], NOW)
    assert store.get("f")["status"] == "succeeded"


def test_existing_task_id_is_reported_and_not_dispatched(store: TaskStore) -> None:
    a = task("same")
    [first] = store.admit([a], NOW)
    [again] = store.admit([task("same", n=99)], NOW + 1)
    assert first.outcome == "dispatch"
    assert (again.outcome, again.status, again.cache, again.worker_id) == (
        "exists", "queued", "miss", "shared")
    assert store.get("same")["payload"] == {"n": 10}
    # the same id twice in one batch: the second is "exists"
    assert [x.outcome for x in store.admit([task("dup", 5), task("dup", 5)], NOW)] == ["dispatch", "exists"]


def test_a_resent_admission_gets_its_first_answer(store: TaskStore) -> None:
    tasks = [task("a"), task("b"), task("c", n=11)]
    first = store.admit(tasks, NOW, token="tok")
    again = store.admit(tasks, NOW, token="tok")
    assert [x.outcome for x in first] == ["dispatch", "coalesced", "dispatch"]
    assert [x.outcome for x in again] == [x.outcome for x in first]
    assert [x.outcome for x in store.admit(tasks, NOW, token="other")] == ["exists"] * 3


def test_round_robin_over_four_live_workers(store: TaskStore) -> None:
    beat(store, "w3", "w1", "w4", "w2")
    admissions = store.admit([task(f"t{i}", n=100 + i) for i in range(40)], NOW)
    assert Counter(a.worker_id for a in admissions) == {"w1": 10, "w2": 10, "w3": 10, "w4": 10}
    # sorted order, one after the other
    assert [a.worker_id for a in admissions[:4]] == ["w1", "w2", "w3", "w4"]


def test_dead_worker_is_never_chosen(store: TaskStore, settings: Settings) -> None:
    beat(store, "live1", "live2")
    beat(store, "dead", at=NOW - int(settings.worker_ttl * 1000) - 1)
    workers = {a.worker_id for a in store.admit([task(f"t{i}", n=200 + i) for i in range(20)], NOW)}
    assert workers == {"live1", "live2"}
    assert store.live_workers(NOW) == ["live1", "live2"]
    assert store.dead_workers(NOW) == ["dead"]


def test_no_live_worker_means_shared(store: TaskStore, settings: Settings) -> None:
    beat(store, "old", at=NOW - 60_000)
    assert store.admit([task("a")], NOW)[0].worker_id == "shared"


def test_shared_dispatch_mode(ns: Namespace) -> None:
    store = TaskStore.for_settings(make_settings(ns.settings.namespace, dispatch_mode="shared"))
    beat(store, "w1")
    assert store.admit([task("a")], NOW)[0].worker_id == "shared"


# Completion --------------------------------------------------------------------------------------

def test_complete_resolves_followers_and_caches_with_ttl(store: TaskStore, ns: Namespace) -> None:
    beat(store, "w1")
    leader, *followers = [task(x, n=77) for x in ("lead", "f1", "f2", "f3")]
    store.admit([leader], NOW)
    store.admit(followers, NOW)
    assert store.complete([result(leader, value=21, worker="w1")], NOW + 5) == ["completed"]
    fp = leader.fingerprint
    assert json.loads(store.redis.get(ns.keys.result(fp))) == 21
    assert 0 < store.redis.pttl(ns.keys.result(fp)) <= store.settings.cache_ttl * 1000
    assert store.redis.exists(ns.keys.inflight(fp), ns.keys.followers(fp)) == 0
    for task_id in ("lead", "f1", "f2", "f3"):
        record = store.get(task_id)
        assert (record["status"], record["result"], record["worker_id"]) == ("succeeded", 21, "w1")
        assert 0 < store.redis.pttl(ns.keys.task(task_id)) <= store.settings.result_ttl * 1000
    assert store.get("f1")["cache"] == "coalesced" and store.get("lead")["cache"] == "miss"


def test_failed_leader_fails_followers_and_caches_nothing(store: TaskStore, ns: Namespace) -> None:
    leader, follower = task("a"), task("b")
    store.admit([leader, follower], NOW)
    store.complete([result(leader, status="failed")], NOW)
    assert store.get("b")["status"] == "failed"
    assert store.get("b")["error"] == "TaskFailed: boom"
    assert store.get("a")["attempt"] == 3
    assert store.redis.get(ns.keys.result(leader.fingerprint)) is None
    assert store.redis.get(ns.keys.inflight(leader.fingerprint)) is None


def test_complete_is_idempotent(store: TaskStore, ns: Namespace) -> None:
    a, b = task("a"), task("b", n=11)
    store.admit([a, b], NOW)
    assert store.complete([result(a, value=4), result(b, value=5)], NOW) == ["completed", "completed"]
    before = {k: store.redis.dump(k) for k in count_keys(ns.settings.namespace) if b"done:" not in k}
    replay = [result(a, value=999, worker="other"), result(a)]
    assert store.complete(replay, NOW) == ["duplicate", "duplicate"]
    after = {k: store.redis.dump(k) for k in count_keys(ns.settings.namespace) if b"done:" not in k}
    assert before == after
    assert store.get("a")["result"] == 4


def test_mark_running(store: TaskStore, ns: Namespace) -> None:
    a = task("a", complexity=2)
    store.admit([a], NOW)
    assert store.mark_running("a", "w9", 1, NOW + 10, complexity=2) is RunVerdict.RUNNING
    record = store.get("a")
    assert (record["status"], record["worker_id"], record["attempt"], record["started_at"]) == (
        "running", "w9", 1, NOW + 10)
    assert store.redis.pttl(ns.keys.inflight(a.fingerprint)) <= store.settings.running_ttl_ms(2)
    assert store.stats(NOW)["tasks"]["running"] == 1
    store.complete([result(a)], NOW)
    assert store.mark_running("a", "w9", 2, NOW + 20) is RunVerdict.FINAL
    assert store.mark_running("nobody", "w9", 1, NOW) is RunVerdict.MISSING
    stats = store.stats(NOW)
    assert stats["tasks"] == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0}


def test_mark_running_keeps_whose_queue_a_stolen_task_came_from_for_that_attempt(store: TaskStore) -> None:
    store.admit([task("s")], NOW)
    assert store.mark_running("s", "w2", 1, NOW + 10, stolen_from="w1") is RunVerdict.RUNNING
    record = store.get("s")
    assert (record["worker_id"], record["stolen_from"]) == ("w2", "w1")
    # Delivered again (w2 died) and run by w1 from its own queue: the record says so.
    assert store.mark_running("s", "w1", 1, NOW + 20, redelivered=True) is RunVerdict.RUNNING
    record = store.get("s")
    assert record["worker_id"] == "w1" and "stolen_from" not in record


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_mark_running_counts_redeliveries_on_classic_queues(ns: Namespace, queue_type: str) -> None:
    """Classic queues have no x-delivery-limit: the worker's MARK_RUNNING counts each redelivery of
    a task and answers "poison" past DELIVERY_LIMIT, so that it runs at most 1 + limit times, as on
    a quorum queue, where the broker counts and MARK_RUNNING never answers "poison"."""
    store = TaskStore(make_settings(ns.settings.namespace, queue_type=queue_type, delivery_limit=2))
    store.admit([task("a")], NOW)
    verdicts = [store.mark_running("a", "w1", 1, NOW)]  # the first delivery is not counted
    verdicts += [store.mark_running("a", "w1", 1, NOW, redelivered=True) for _ in range(3)]
    if queue_type == "classic":
        assert verdicts == ["running", "running", "running", "poison"]
    else:
        assert verdicts == ["running"] * 4
    record = store.get("a")
    assert record["status"] == "running" and "deliveries" not in record  # bookkeeping, not shown
    assert "deliveries" not in store.get_many(["a"])["a"]
    # A final task is acked whatever its count (nothing to dead-letter), a missing one dropped.
    store.complete([result(task("a"))], NOW)
    assert store.mark_running("a", "w1", 2, NOW, redelivered=True) is RunVerdict.FINAL
    assert store.mark_running("nobody", "w1", 1, NOW, redelivered=True) is RunVerdict.MISSING


# Undo --------------------------------------------------------------------------------------------

def test_undo_leaves_no_inflight_key_or_record(store: TaskStore, ns: Namespace) -> None:
    beat(store, "w1")
    admissions = store.admit([task("a"), task("b"), task("c", cache=False)], NOW)
    assert store.undo(admissions, NOW) == 3
    remaining = [k for k in count_keys(ns.settings.namespace)
                 if not k.endswith((b"workers", b"worker:w1", b"rr", b"stats"))]
    assert remaining == []
    assert store.stats(NOW)["tasks"]["queued"] == 0
    # the ids are free again
    assert store.admit([task("a")], NOW)[0].outcome == "dispatch"


def test_undo_fails_followers_from_other_requests(store: TaskStore) -> None:
    [lead] = store.admit([task("lead")], NOW)
    store.admit([task("other")], NOW)  # another request coalesced onto the leader
    store.undo([lead], NOW)
    record = store.get("other")
    assert record["status"] == "failed"
    assert "could not be dispatched" in record["error"]


def test_undo_keeps_a_task_a_worker_already_started(store: TaskStore, ns: Namespace) -> None:
    [lead] = store.admit([task("a")], NOW)
    store.mark_running("a", "w1", 1, NOW)
    assert store.undo([lead], NOW) == 0
    assert store.get("a")["status"] == "running"
    assert store.redis.get(ns.keys.inflight(lead.task.fingerprint)) == b"a"


# Long-poll ---------------------------------------------------------------------------------------

def test_wait_returns_promptly_when_completed_from_another_thread(store: TaskStore) -> None:
    a = task("a")
    store.admit([a, task("b")], NOW)
    timer = threading.Timer(0.3, lambda: store.complete([result(a)], NOW))
    timer.start()
    woken: dict[str, float] = {}

    def waiter(task_id: str) -> None:
        start = time.monotonic()
        record = store.wait(task_id, 10)
        assert record is not None and record["status"] == "succeeded"
        woken[task_id] = time.monotonic() - start

    threads = [threading.Thread(target=waiter, args=(t,)) for t in ("a", "a", "b")]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    timer.join()
    assert time.monotonic() - start < 1.5  # far below the 10 s wait and the 2 s block slice
    assert set(woken) == {"a", "b"}


def test_wait_times_out_and_handles_unknown_ids(store: TaskStore) -> None:
    store.admit([task("a")], NOW)
    start = time.monotonic()
    assert store.wait("a", 0.3)["status"] == "queued"
    assert 0.25 < time.monotonic() - start < 1.5
    assert store.wait("unknown", 5) is None
    store.complete([result(task("a"))], NOW)
    assert store.wait("a", 0)["status"] == "succeeded"


def test_wait_many_answers_once_all_known_tasks_are_final(store: TaskStore) -> None:
    a, b, c = task("a"), task("b"), task("c")
    store.admit([a, b, c], NOW)
    store.complete([result(b)], NOW)
    timers = [threading.Timer(0.2, lambda: store.complete([result(a)], NOW)),
              threading.Timer(0.4, lambda: store.complete([result(c)], NOW))]
    for timer in timers:
        timer.start()
    start = time.monotonic()
    records = store.wait_many(["c", "unknown", "a", "b"], 10)
    for timer in timers:
        timer.join()
    assert time.monotonic() - start < 1.5  # woken by each completion, not by the 2 s block slice
    assert sorted(records) == ["a", "b", "c"]
    assert {record["status"] for record in records.values()} == {"succeeded"}


def test_wait_many_times_out_with_records_as_they_are(store: TaskStore) -> None:
    store.admit([task("a"), task("b")], NOW)
    store.complete([result(task("b"))], NOW)
    start = time.monotonic()
    records = store.wait_many(["a", "b"], 0.3)
    assert 0.25 < time.monotonic() - start < 1.5
    assert (records["a"]["status"], records["b"]["status"]) == ("queued", "succeeded")
    assert store.wait_many(["unknown"], 5) == {}
    assert store.get_many(["b", "unknown"]) == {"b": records["b"]}


# Workers and stats -------------------------------------------------------------------------------

def test_worker_report_and_forgetting_dead_workers(store: TaskStore, settings: Settings,
                                                   ns: Namespace) -> None:
    beat(store, "w1")
    beat(store, "w2", at=NOW - 20_000)
    report = store.worker_report(NOW)
    assert [(w["worker_id"], w["live"]) for w in report] == [("w1", True), ("w2", False)]
    assert report[0]["processed"] == 5 and report[0]["heartbeat_age"] == 0
    assert store.forget_workers(["w1", "w2"], NOW) == ["w2"]  # w1 is alive: kept
    assert store.redis.exists(ns.keys.worker("w2")) == 0
    assert store.live_workers(NOW) == ["w1"] and store.dead_workers(NOW) == []
    assert 0 < store.redis.ttl(ns.keys.worker("w1")) <= settings.worker_ttl * 6 + 1


def test_stats_counts(store: TaskStore) -> None:
    a = task("a")
    store.admit([a, task("b"), task("c", n=11, cache=False)], NOW)
    store.complete([result(a)], NOW)
    store.admit([task("d"), task("a")], NOW)
    stats = store.stats(NOW)
    assert stats["cache"] == {"hit": 1, "miss": 1, "coalesced": 1, "bypass": 1}
    assert stats["existing_ids"] == 1
    assert stats["tasks"] == {"queued": 1, "running": 0, "succeeded": 3, "failed": 0}
    assert stats["cache_hit_ratio"] == 0.25 and stats["cache_saved_ratio"] == 0.5
    assert stats["throughput_per_minute"] == pytest.approx(2 / 5)


# The client --------------------------------------------------------------------------------------

def test_a_single_threaded_store_connects_at_first_use_and_reconnects(settings: Settings) -> None:
    down = make_settings(settings.namespace, redis_url="redis://127.0.0.1:1/0", redis_timeout=0.5)
    unreachable = TaskStore.for_settings(down, single_threaded=True)  # a cold start with Redis down
    with pytest.raises(redis.ConnectionError):
        unreachable.get("a")

    store = TaskStore.for_settings(settings, single_threaded=True)
    assert store.redis is TaskStore.client_for(settings, single_threaded=True)
    assert store.redis is not TaskStore.client_for(settings)  # threads keep the pooled one
    store.admit([task("a")], NOW)
    connection = store.redis.connection  # the one connection every command goes through
    assert connection is not None and store.get("a")["status"] == "queued"
    connection.disconnect()  # dropped under the client (a Redis restart, an idle timeout)
    assert store.mark_running("a", "w1", 1, NOW + 1) == RunVerdict.RUNNING
    assert store.redis.connection is connection and store.get("a")["status"] == "running"

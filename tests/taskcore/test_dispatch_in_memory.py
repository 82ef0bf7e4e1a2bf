"""dispatch.submit, the janitor and GET /stats on the in-memory broker (taskcore.rabbitmq.memory) and
the real Redis: what test_dispatch.py proves against RabbitMQ, and cases RabbitMQ makes slow or
awkward to set up (a delivery limit spent, a broker down, a zombie consumer), in milliseconds each.
test_broker_contract.py holds the in-memory broker to RabbitMQ's behaviour."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from taskcore.dispatch import UNCONFIRMED_SECONDS, janitor, stats, steal_hold_ms, submit, worker_report
from taskcore.errors import Unavailable
from taskcore.messages import Task, TaskSpec
from taskcore.rabbitmq import BrokerError, Delivery
from taskcore.rabbitmq.memory import MemoryBroker
from taskcore.store import TaskStore, now_ms
from tests.taskcore.conftest import Namespace, make_settings


@pytest.fixture
def broker(redis_ns: Namespace) -> Iterator[MemoryBroker]:
    with MemoryBroker(redis_ns.settings) as memory:
        yield memory


@pytest.fixture
def store(redis_ns: Namespace) -> TaskStore:
    return TaskStore.for_settings(redis_ns.settings)


def spec(n: int, task_id: str | None = None, cache: bool = True) -> TaskSpec:
    return TaskSpec("primes", {"n": n}, 1, task_id, cache)


def beat(store: TaskStore, worker: str, at: int) -> None:
    store.heartbeat(worker, {"host": "h", "pid": 1, "in_flight": 0, "processed": 0}, at)


def take(broker: MemoryBroker, queue: str) -> list[Delivery]:
    got = []
    with broker.reader(queue) as reader:
        while (delivery := reader.get()) is not None:
            reader.ack(delivery.tag)
            got.append(delivery)
    return got


def task_ids(broker: MemoryBroker, queue: str) -> list[str]:
    return [Task.from_json(d.body).task_id for d in take(broker, queue)]


def test_submit_publishes_leaders_round_robin_and_reroutes_what_is_unroutable(
        redis_ns: Namespace, store: TaskStore, broker: MemoryBroker) -> None:
    keys, now = redis_ns.keys, now_ms()
    broker.declare(["w1", "w2"])
    for worker in ("w1", "w2", "ghost"):  # ghost beats, but its queue was never declared
        beat(store, worker, now)
    replies = submit([spec(1, "a"), spec(1, "b"), spec(2, "c"), spec(3, "d"), spec(4, "e")],
                     redis_ns.settings, store, broker, now)
    # ghost's were unroutable: sent to the shared queue instead, and the replies and records say so
    assert [(r["task_id"], r["cache"], r["worker_id"]) for r in replies if r["task_id"] != "b"] == [
        ("a", "miss", "shared"), ("c", "miss", "w1"), ("d", "miss", "w2"), ("e", "miss", "shared")]
    assert replies[1]["cache"] == "coalesced"
    assert task_ids(broker, keys.worker_queue("w1")) == ["c"]
    assert task_ids(broker, keys.worker_queue("w2")) == ["d"]
    assert task_ids(broker, keys.shared_queue) == ["a", "e"]  # the follower b is not published
    assert store.get("a")["worker_id"] == store.get("e")["worker_id"] == "shared"


def test_submit_with_the_broker_down_is_unavailable_and_leaves_no_record(
        redis_ns: Namespace, store: TaskStore, broker: MemoryBroker) -> None:
    broker.declare()
    broker.server.available = False
    with pytest.raises(Unavailable):
        submit([spec(1, "a"), spec(1, "b")], redis_ns.settings, store, broker)
    assert store.get("a") is None and store.get("b") is None
    broker.server.available = True
    [reply] = submit([spec(1, "a")], redis_ns.settings, store, broker)  # admitted afresh
    assert reply["cache"] == "miss" and task_ids(broker, redis_ns.keys.shared_queue) == ["a"]


def test_janitor_moves_a_dead_workers_queue_deletes_it_and_forgets_the_worker(
        redis_ns: Namespace, store: TaskStore, broker: MemoryBroker) -> None:
    settings, keys, now = redis_ns.settings, redis_ns.keys, now_ms()
    broker.declare(["dead", "w1", "w2"])
    beat(store, "dead", now)
    submit([spec(100 + i, f"t{i}") for i in range(6)], settings, store, broker, now)
    broker.publish(keys.tasks_exchange, [("w.dead", b"not a task", "x")])
    later = now + int(settings.worker_ttl * 1000) + 1
    beat(store, "w1", later)
    beat(store, "w2", later)

    report = janitor(settings, store, broker, later)

    # Drained at once, but kept while a message stolen from it could still come back (steal_hold_ms).
    assert report["dead"] == ["dead"] and report["removed"] == [] and report["kept"] == ["dead"]
    assert report["moved"] == {"dead": {"w1": 3, "w2": 3}}
    on_w1, on_w2 = task_ids(broker, keys.worker_queue("w1")), task_ids(broker, keys.worker_queue("w2"))
    assert sorted(on_w1 + on_w2) == [f"t{i}" for i in range(6)] and len(on_w1) == 3
    assert Counter(store.get(f"t{i}")["worker_id"] for i in range(6)) == {"w1": 3, "w2": 3}
    assert broker.depths([keys.worker_queue("dead")]) == {keys.worker_queue("dead"): 0}
    # the unparseable message was dead-lettered on the way, not moved
    [dead] = take(broker, keys.tasks_dead_queue)
    assert dead.body == b"not a task" and dead.headers["x-death"][0]["reason"] == "rejected"
    gone = later + steal_hold_ms(settings)
    for worker in ("w1", "w2"):
        beat(store, worker, gone)
    report = janitor(settings, store, broker, gone)
    assert report["removed"] == ["dead"] and report["moved"] == {}
    assert broker.depths([keys.worker_queue("dead")]) == {keys.worker_queue("dead"): None}
    assert store.dead_workers(gone) == [] and janitor(settings, store, broker, gone)["dead"] == []


def test_a_message_stolen_from_a_dead_workers_queue_comes_back_to_the_queue_the_janitor_kept(
        redis_ns: Namespace, store: TaskStore, broker: MemoryBroker) -> None:
    """A thief holds a message it got from a worker's queue with a get, which makes it no consumer
    of that queue: had the janitor deleted the drained queue, the message would be lost when the
    thief died. It keeps the queue for steal_hold_ms, so a later run moves what comes back."""
    settings, keys, now = redis_ns.settings, redis_ns.keys, now_ms()
    broker.declare(["dead", "thief"])
    beat(store, "dead", now)
    submit([spec(40 + i, f"s{i}") for i in range(2)], settings, store, broker, now)
    thief = broker.open_consumer("thief")
    stolen = thief.steal(keys.worker_queue("dead"), 1)
    assert stolen is not None
    later = now + int(settings.worker_ttl * 1000) + 1
    beat(store, "thief", later)
    report = janitor(settings, store, broker, later)
    assert report["moved"] == {"dead": {"thief": 1}} and report["kept"] == ["dead"]
    thief.close()  # dies holding it: back to the dead worker's queue, still there
    report = janitor(settings, store, broker, later)
    assert report["moved"] == {"dead": {"thief": 1}}
    assert sorted(task_ids(broker, keys.worker_queue("thief"))) == ["s0", "s1"]
    gone = later + steal_hold_ms(settings)
    beat(store, "thief", gone)
    assert janitor(settings, store, broker, gone)["removed"] == ["dead"]


def test_janitor_keeps_the_queue_of_a_worker_still_connected_until_it_lets_go(
        redis_ns: Namespace, store: TaskStore, broker: MemoryBroker) -> None:
    settings, keys, now = redis_ns.settings, redis_ns.keys, now_ms()
    broker.declare(["zombie"])
    beat(store, "zombie", now)
    submit([spec(20 + i, f"z{i}") for i in range(3)], settings, store, broker, now)
    zombie = broker.open_consumer("zombie")
    held: list[Delivery] = []
    zombie.consume(keys.worker_queue("zombie"), 1, held.append)
    zombie.poll(0)
    later = now + 60_000  # no live worker: moved to the shared queue

    report = janitor(settings, store, broker, later)

    assert report["moved"] == {"zombie": {"shared": 2}}
    assert report["kept"] == ["zombie"] and report["removed"] == []
    held_id = Task.from_json(held[0].body).task_id
    assert sorted(task_ids(broker, keys.shared_queue)) == sorted({"z0", "z1", "z2"} - {held_id})
    zombie.close()  # the held task goes back to the zombie's queue; the next run moves it
    report = janitor(settings, store, broker, later)
    assert report["moved"] == {"zombie": {"shared": 1}} and report["kept"] == ["zombie"]
    assert task_ids(broker, keys.shared_queue) == [held_id]
    report = janitor(settings, store, broker, later + steal_hold_ms(settings))
    assert report["moved"] == {} and report["removed"] == ["zombie"]


def test_janitor_fails_a_task_the_broker_dead_lettered_after_its_delivery_limit(
        redis_ns: Namespace, store: TaskStore) -> None:
    settings = make_settings(redis_ns.settings.namespace, delivery_limit=2)
    broker, keys, now = MemoryBroker(settings), redis_ns.keys, now_ms()
    broker.declare()
    submit([spec(5, "leader")], settings, store, broker, now)
    submit([spec(5, "follower")], settings, store, broker, now)  # coalesced onto the leader
    broker.publish(keys.tasks_exchange, [("shared", b"not a task", "g")])
    # Every worker that takes it dies: three deliveries, then the broker gives up on it.
    for _ in range(3):
        with broker.reader(keys.shared_queue) as reader:
            assert reader.get() is not None  # returned unacked when the reader closes
    assert broker.queue_state(keys.tasks_dead_queue).messages == 1
    take(broker, keys.shared_queue)  # the garbage: put in tasks.dead by hand
    broker.publish(keys.dead_exchange, [("tasks.dead", b"not a task", "g")])

    report = janitor(settings, store, broker, now)

    assert report["failed_dead"] == 1
    for task_id in ("leader", "follower"):
        record = store.get(task_id)
        assert record["status"] == "failed" and "dead-lettered" in record["error"], record
    [left] = take(broker, keys.tasks_dead_queue)  # what is no task stays, for an operator
    assert left.body == b"not a task"


def test_janitor_with_the_broker_down_forgets_nobody(redis_ns: Namespace, store: TaskStore,
                                                     broker: MemoryBroker) -> None:
    settings, now = redis_ns.settings, now_ms()
    broker.declare(["dead"])
    beat(store, "dead", now - 60_000)
    broker.server.available = False
    with pytest.raises(BrokerError):  # dead letters cannot be read: the invocation fails
        janitor(settings, store, broker, now)
    assert store.dead_workers(now) == ["dead"]


def test_stats_list_every_queue_of_the_topology_with_its_depth_or_none_when_down(
        redis_ns: Namespace, store: TaskStore, broker: MemoryBroker) -> None:
    settings, keys, now = redis_ns.settings, redis_ns.keys, now_ms()
    broker.declare(["w1"])
    beat(store, "w1", now)
    submit([spec(3, "a"), spec(4, "b")], settings, store, broker, now)
    broker.publish("", [(keys.retry_queue(1000), b"{}", "r")])
    queues = stats(settings, store, broker, now)["queues"]
    assert queues == {keys.shared_queue: 0, keys.results_queue: 0, keys.tasks_dead_queue: 0,
                      keys.results_dead_queue: 0, keys.retry_queue(1000): 1, keys.retry_queue(2000): 0,
                      keys.worker_queue("w1"): 2}
    broker.server.available = False
    down = stats(settings, store, broker, now)
    assert down["queues"] is None and "BrokerUnavailable" in down["broker_error"]
    assert down["tasks"]["queued"] == 2  # Redis's part still answers


def test_a_worker_queue_that_does_not_confirm_is_routed_around_and_left_out_for_a_while(
        redis_ns: Namespace, store: TaskStore, broker: MemoryBroker) -> None:
    """A queue without a leader (RabbitMQ 3.10 after a crash, docs/taskcore.md) never confirms: its
    tasks go to the shared queue, and the worker is left out of the round-robin for
    UNCONFIRMED_SECONDS, so that later submissions do not wait for it."""
    keys, now = redis_ns.keys, now_ms()
    broker.declare(["w1", "w2"])
    for worker in ("w1", "w2"):
        beat(store, worker, now)
    broker.server.leaderless.add(keys.worker_queue("w1"))
    replies = submit([spec(n, f"t{n}") for n in range(1, 5)], redis_ns.settings, store, broker, now,
                     deadline_ms=now_ms() + 5000)
    assert [r["worker_id"] for r in replies] == ["shared", "w2", "shared", "w2"]
    assert [store.get(f"t{n}")["worker_id"] for n in range(1, 5)] == ["shared", "w2", "shared", "w2"]
    assert task_ids(broker, keys.shared_queue) == ["t1", "t3"]
    assert task_ids(broker, keys.worker_queue("w2")) == ["t2", "t4"]
    ttl = store.redis.pttl(keys.unconfirmed("w1"))
    assert 0 < ttl <= UNCONFIRMED_SECONDS * 1000
    report = {w["worker_id"]: w for w in worker_report(store, now)["workers"]}
    assert 0 < report["w1"]["unconfirmed_for"] <= UNCONFIRMED_SECONDS
    assert "unconfirmed_for" not in report["w2"]
    later = submit([spec(n, f"u{n}") for n in range(5, 8)], redis_ns.settings, store, broker, now)
    assert [r["worker_id"] for r in later] == ["w2", "w2", "w2"]  # w1 left out: no publish waits on it
    # Once the mark is gone, w1 takes its turn again.
    store.redis.delete(keys.unconfirmed("w1"))
    broker.server.leaderless.clear()
    again = submit([spec(n, f"v{n}") for n in range(8, 10)], redis_ns.settings, store, broker, now)
    assert sorted(r["worker_id"] for r in again) == ["w1", "w2"]


def test_a_publish_the_shared_queue_does_not_confirm_either_is_a_503_that_leaves_nothing(
        redis_ns: Namespace, store: TaskStore, broker: MemoryBroker) -> None:
    keys, now = redis_ns.keys, now_ms()
    broker.declare(["w1"])
    beat(store, "w1", now)
    broker.server.leaderless |= {keys.worker_queue("w1"), keys.shared_queue}
    with pytest.raises(Unavailable):
        submit([spec(1, "a")], redis_ns.settings, store, broker, now, deadline_ms=now_ms() + 5000)
    assert store.get("a") is None
    assert store.redis.exists(keys.unconfirmed("w1")) == 0  # the broker, not the worker: nobody marked

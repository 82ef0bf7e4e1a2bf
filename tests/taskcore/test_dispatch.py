"""The supervisor's logic (submit, janitor, reports) against the real Redis and RabbitMQ."""

from __future__ import annotations

from collections import Counter

import pytest
from pika.adapters.blocking_connection import BlockingChannel

from taskcore.dispatch import janitor, stats, steal_hold_ms, submit, worker_report
from taskcore.errors import Unavailable
from taskcore.keys import Keys
from taskcore.messages import Task, TaskResult, TaskSpec
from taskcore.rabbitmq.amqp import AmqpBroker
from taskcore.settings import Settings
from taskcore.store import TaskStore, now_ms
from tests.taskcore.conftest import CLOSED_PORT_AMQP, CLOSED_PORT_REDIS, Namespace, count_keys, make_settings


def spec(n: int, task_id: str | None = None, cache: bool = True) -> TaskSpec:
    return TaskSpec("primes", {"n": n}, 1, task_id, cache)


def beat(store: TaskStore, worker: str, at: int) -> None:
    store.heartbeat(worker, {"host": "h", "pid": 1, "in_flight": 0, "processed": 0}, at)


def drain(channel: BlockingChannel, queue: str) -> list[Task]:
    tasks = []
    while (got := channel.basic_get(queue, auto_ack=True))[0] is not None:
        tasks.append(Task.from_json(got[2]))
    return tasks


def test_submit_publishes_leaders_only(ns: Namespace, store: TaskStore, broker: AmqpBroker,
                                       channel: BlockingChannel) -> None:
    ns.worker_ids.update({"w1", "w2"})
    broker.declare(["w1", "w2"])
    now = now_ms()
    beat(store, "w1", now)
    beat(store, "w2", now)
    replies = submit([spec(10, "a"), spec(10, "b"), spec(11, "c"), spec(12), spec(10, "d", cache=False)],
                     ns.settings, store, broker, now)
    assert [(r["status"], r["cache"], r["worker_id"]) for r in replies] == [
        ("queued", "miss", "w1"), ("queued", "coalesced", "w1"), ("queued", "miss", "w2"),
        ("queued", "miss", "w1"), ("queued", "bypass", "w2")]
    assert replies[3]["task_id"]  # an id was assigned
    assert set(replies[0]) == {"task_id", "status", "cache", "worker_id", "existing"}
    on_w1 = drain(channel, ns.keys.worker_queue("w1"))
    on_w2 = drain(channel, ns.keys.worker_queue("w2"))
    assert [t.task_id for t in on_w1] == ["a", replies[3]["task_id"]]
    assert [t.task_id for t in on_w2] == ["c", "d"]
    assert on_w1[0].payload == {"n": 10} and on_w1[0].attempt == 0 and on_w1[0].submitted_at == now
    # a repeated task_id returns the existing task and dispatches nothing
    again = submit([spec(10, "a")], ns.settings, store, broker, now)
    assert again == [{"task_id": "a", "status": "queued", "cache": "miss", "worker_id": "w1",
                      "existing": True}]
    assert drain(channel, ns.keys.worker_queue("w1")) == []


def test_submit_without_live_workers_uses_the_shared_queue(ns: Namespace, store: TaskStore,
                                                           broker: AmqpBroker,
                                                           channel: BlockingChannel) -> None:
    broker.declare()
    [reply] = submit([spec(10, "a")], ns.settings, store, broker)
    assert reply["worker_id"] == "shared"
    assert [t.task_id for t in drain(channel, ns.keys.shared_queue)] == ["a"]


def test_submit_reroutes_to_shared_when_a_worker_queue_is_gone(ns: Namespace, store: TaskStore,
                                                               broker: AmqpBroker,
                                                               channel: BlockingChannel) -> None:
    broker.declare()  # no queue for "ghost"
    beat(store, "ghost", now_ms())
    [reply] = submit([spec(10, "a")], ns.settings, store, broker)
    assert reply["worker_id"] == "shared"
    assert store.get("a")["worker_id"] == "shared"
    assert [t.task_id for t in drain(channel, ns.keys.shared_queue)] == ["a"]


def test_submit_with_rabbitmq_unreachable_leaves_nothing(ns: Namespace, store: TaskStore) -> None:
    dead_broker = AmqpBroker(ns.settings, url=CLOSED_PORT_AMQP)
    beat(store, "w1", now_ms())
    before = count_keys(ns.settings.namespace)
    with pytest.raises(Unavailable) as caught:
        submit([spec(10, "a"), spec(10, "b"), spec(11, "c")], ns.settings, store, dead_broker)
    assert caught.value.code == "unavailable"
    keys = Keys(ns.settings.namespace)
    assert store.get("a") is None and store.get("b") is None and store.get("c") is None
    leftover = [k for k in count_keys(ns.settings.namespace) if k not in before and k != keys.rr.encode()]
    assert leftover == [keys.stats.encode()]  # counters only, back to zero
    assert set(store.stats()["cache"].values()) == {0}
    assert store.stats()["tasks"]["queued"] == 0


def test_submit_with_redis_unreachable_is_unavailable(ns: Namespace, broker: AmqpBroker) -> None:
    settings = make_settings(ns.settings.namespace, redis_url=CLOSED_PORT_REDIS, redis_timeout=1.0)
    with pytest.raises(Unavailable):
        submit([spec(10, "a")], settings, TaskStore.for_settings(settings), broker)


def test_janitor_moves_a_dead_workers_queue_to_live_workers(ns: Namespace, store: TaskStore,
                                                            broker: AmqpBroker,
                                                            channel: BlockingChannel) -> None:
    ns.worker_ids.update({"dead", "w1", "w2"})
    broker.declare(["dead", "w1", "w2"])
    now = now_ms()
    beat(store, "dead", now)
    submit([spec(100 + i, f"t{i}") for i in range(6)], ns.settings, store, broker, now)
    assert Counter(store.get(f"t{i}")["worker_id"] for i in range(6)) == {"dead": 6}
    # "dead" stops beating; two others start
    later = now + int(ns.settings.worker_ttl * 1000) + 1
    beat(store, "w1", later)
    beat(store, "w2", later)
    store.mark_running("t0", "dead", 1, now)  # this one a worker already holds: its record stays

    report = janitor(ns.settings, store, broker, later)

    # Drained at once; deleted once no message stolen from it can come back (steal_hold_ms).
    assert report["dead"] == ["dead"] and report["kept"] == ["dead"]
    assert report["moved"] == {"dead": {"w1": 3, "w2": 3}}
    on_w1 = [t.task_id for t in drain(channel, ns.keys.worker_queue("w1"))]
    on_w2 = [t.task_id for t in drain(channel, ns.keys.worker_queue("w2"))]
    assert sorted(on_w1 + on_w2) == [f"t{i}" for i in range(6)]
    assert len(on_w1) == len(on_w2) == 3
    for task_id in on_w1[1:] if "t0" in on_w1 else on_w1:
        assert store.get(task_id)["worker_id"] == "w1"
    assert store.get("t0")["worker_id"] == "dead"
    later += steal_hold_ms(ns.settings)
    beat(store, "w1", later)
    beat(store, "w2", later)
    report = janitor(ns.settings, store, broker, later)
    assert report["removed"] == ["dead"] and report["moved"] == {}
    with pytest.raises(Exception):  # noqa: B017 - the queue is gone (404 closes the channel)
        channel.queue_declare(ns.keys.worker_queue("dead"), passive=True)
    assert store.dead_workers(later) == [] and store.live_workers(later) == ["w1", "w2"]
    # nothing left to do on the next run
    assert janitor(ns.settings, store, broker, later)["dead"] == []


def test_janitor_without_live_workers_moves_to_shared(ns: Namespace, store: TaskStore, broker: AmqpBroker,
                                                      channel: BlockingChannel) -> None:
    ns.worker_ids.add("gone")
    broker.declare(["gone"])
    now = now_ms()
    beat(store, "gone", now)
    submit([spec(5, "a")], ns.settings, store, broker, now)
    channel.basic_publish(ns.keys.tasks_exchange, "w.gone", b"not a task")
    report = janitor(ns.settings, store, broker, now + 60_000)
    assert report["moved"] == {"gone": {"shared": 1}}
    assert [t.task_id for t in drain(channel, ns.keys.shared_queue)] == ["a"]
    assert store.get("a")["worker_id"] == "shared"
    # the unparseable message went to the dead letters, not to a worker
    assert drain_raw_count(channel, ns.keys.tasks_dead_queue) == 1


def drain_raw_count(channel: BlockingChannel, queue: str, timeout: float = 5) -> int:
    import time
    deadline = time.monotonic() + timeout
    while (n := channel.queue_declare(queue, passive=True).method.message_count) == 0 \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    return n


def test_janitor_forgets_a_dead_worker_without_a_queue(ns: Namespace, store: TaskStore,
                                                       broker: AmqpBroker) -> None:
    beat(store, "never-declared", now_ms() - 60_000)
    report = janitor(ns.settings, store, broker)
    assert report["removed"] == ["never-declared"]


def test_janitor_fails_dead_lettered_tasks_and_leaves_garbage(ns: Namespace, store: TaskStore,
                                                              broker: AmqpBroker, channel: BlockingChannel,
                                                              settings: Settings) -> None:
    broker.declare([])
    now = now_ms()
    beat(store, "w1", now)
    submit([spec(5, "leader")], settings, store, broker, now)
    submit([spec(5, "follower")], settings, store, broker, now)  # coalesced onto the leader
    leader = Task.from_spec(spec(5, "leader"), now)
    # What the broker does after the delivery limit: the message lands in tasks.dead.
    for body in (leader.to_json(), b"not a task"):
        channel.basic_publish("", ns.keys.tasks_dead_queue, body)
    report = janitor(settings, store, broker, now)
    assert report["failed_dead"] == 1
    for task_id in ("leader", "follower"):
        record = store.get(task_id)
        assert record["status"] == "failed" and "dead-lettered" in record["error"], record
    # The message that is no task stays, for an operator and GET /stats to see.
    depth = channel.queue_declare(ns.keys.tasks_dead_queue, passive=True).method.message_count
    assert depth == 1
    assert janitor(settings, store, broker, now)["failed_dead"] == 0


def test_reports(ns: Namespace, store: TaskStore, broker: AmqpBroker, channel: BlockingChannel,
                 settings: Settings) -> None:
    ns.worker_ids.add("w1")
    broker.declare(["w1"])
    now = now_ms()
    beat(store, "w1", now)
    beat(store, "w0", now - 30_000)
    submit([spec(3, "a"), spec(3, "b")], settings, store, broker, now)
    store.complete([TaskResult("a", Task.from_spec(spec(3, "a"), now).fingerprint, "succeeded", "w1",
                               now, now, 1, result=1)], now)
    workers = worker_report(store, now)
    assert [w["worker_id"] for w in workers["workers"]] == ["w1"]
    assert [w["worker_id"] for w in workers["dead"]] == ["w0"]
    report = stats(settings, store, broker, now)
    assert report["queues"][ns.keys.worker_queue("w1")] == 1
    assert report["queues"][ns.keys.shared_queue] == 0
    assert report["tasks"]["succeeded"] == 2
    assert report["cache"]["coalesced"] == 1
    broken = stats(settings, store, AmqpBroker(settings, url=CLOSED_PORT_AMQP), now)
    assert broken["queues"] is None and "broker_error" in broken


def test_janitor_keeps_the_queue_of_a_worker_still_connected(ns: Namespace, store: TaskStore,
                                                             broker: AmqpBroker,
                                                             channel: BlockingChannel) -> None:
    ns.worker_ids.update({"zombie", "w1"})
    broker.declare(["zombie", "w1"])
    now = now_ms()
    beat(store, "zombie", now)
    submit([spec(20 + i, f"z{i}") for i in range(3)], ns.settings, store, broker, now)
    # The zombie holds one task unacked and stops heart-beating, but keeps its connection.
    held: list[str] = []
    zombie = channel.connection.channel()
    zombie.basic_qos(prefetch_count=1)
    zombie.basic_consume(ns.keys.worker_queue("zombie"),
                         lambda _ch, _m, _p, body: held.append(Task.from_json(body).task_id))
    while not held:
        channel.connection.process_data_events(0.05)
    later = now + 60_000
    beat(store, "w1", later)
    report = janitor(ns.settings, store, broker, later)
    assert report["moved"] == {"zombie": {"w1": 2}}
    assert report["kept"] == ["zombie"] and report["removed"] == []
    assert store.dead_workers(later) == ["zombie"]  # looked at again next run
    assert sorted(t.task_id for t in drain(channel, ns.keys.worker_queue("w1"))) == sorted(
        {"z0", "z1", "z2"} - set(held))
    zombie.close()  # the held task goes back to the zombie's queue; the next run moves it
    report = janitor(ns.settings, store, broker, later)
    assert report["moved"] == {"zombie": {"w1": 1}} and report["kept"] == ["zombie"]
    later += steal_hold_ms(ns.settings)
    beat(store, "w1", later)
    assert janitor(ns.settings, store, broker, later)["removed"] == ["zombie"]
    assert [t.task_id for t in drain(channel, ns.keys.worker_queue("w1"))] == held

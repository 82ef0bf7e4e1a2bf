from __future__ import annotations

from taskcore.keys import Keys, routing_key_for, worker_routing_key


def test_every_name_carries_the_namespace() -> None:
    k = Keys("t1:")
    assert k.task("a") == "t1:task:a"
    assert k.result("fp") == "t1:result:fp"
    assert k.inflight("fp") == "t1:inflight:fp"
    assert k.followers("fp") == "t1:followers:fp"
    assert k.done("a") == "t1:done:a"
    assert (k.workers, k.worker("w1"), k.rr) == ("t1:workers", "t1:worker:w1", "t1:rr")
    assert (k.tasks_exchange, k.results_exchange, k.dead_exchange) == ("t1:tasks", "t1:results", "t1:dead")
    assert k.worker_queue("w1") == "t1:tasks.w.w1"
    assert (k.shared_queue, k.results_queue) == ("t1:tasks.shared", "t1:results")
    assert (k.tasks_dead_queue, k.results_dead_queue) == ("t1:tasks.dead", "t1:results.dead")


def test_default_namespace_is_empty() -> None:
    k = Keys()
    assert k.task("a") == "task:a"
    assert k.worker_queue("3") == "tasks.w.3"


def test_routing_keys() -> None:
    assert worker_routing_key("w1") == "w.w1"
    assert routing_key_for("w1") == "w.w1"
    assert routing_key_for("shared") == "shared"

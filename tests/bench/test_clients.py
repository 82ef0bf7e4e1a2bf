"""bench/clients.py, the benchmark's load generator: against the fake system of test_driver (the task
contract in-process, counting requests, connections and requests in flight), then against a real
peer (Dramatiq behind its gunicorn front, RabbitMQ and Redis)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from bench import clients, systems
from tests.bench.test_driver import FakeSystem, served

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CountingSystem(FakeSystem):
    """The fake system, also recording each request (method, path, ids asked, client port) and the
    most requests it had in flight at once."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seen: list[tuple[str, str, int, int]] = []  # method, path, ids in the query, client port
        self.in_flight = self.most_in_flight = 0

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self.count)
        return app

    @web.middleware
    async def count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ids = len(request.query["ids"].split(",")) if "ids" in request.query else 0
        self.seen.append((request.method, request.path, ids, peer[1] if peer else 0))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    def gets(self, batch: bool) -> list[tuple[str, str, int, int]]:
        return [seen for seen in self.seen if seen[0] == "GET" and (seen[1] == "/results") == batch]


def tasks(count: int, kind: str = "hash") -> list[dict[str, Any]]:
    return [{"type": kind, "payload": {"data": str(i)}} for i in range(count)]


def drive(system: FakeSystem, work: list[dict[str, Any]], **options: Any) -> Any:
    with served(system) as url:
        return clients.run_load(work, clients.Target(url, url), **options)


@pytest.mark.parametrize("batch", [1, 10])
def test_every_result_is_read_one_id_per_request(batch: int) -> None:
    system = CountingSystem(delay=0.02)
    report = drive(system, tasks(60), clients=4, batch=batch, reads="one")
    summary = report.summary()
    assert summary["ok"] and summary["status"]["succeeded"] == 60
    assert summary["requests"]["submissions"] == 60 // batch
    assert not system.gets(batch=True)  # no GET /results?ids=
    read = [path for _, path, _, _ in system.gets(batch=False)]
    assert {f"/results/{task.task_id}" for task in report.tasks} <= set(read)
    # Four clients: at most four requests at once, on four kept-alive connections.
    assert system.most_in_flight <= 4
    assert len({port for *_, port in system.seen}) <= 4
    assert all(task.latency is not None and task.latency > 0 for task in report.tasks)


def test_one_client_submits_then_reads_its_task() -> None:
    system = CountingSystem(delay=0.01)
    assert drive(system, tasks(5), clients=1, reads="one").ok
    assert [method for method, *_ in system.seen] == ["POST", "GET"] * 5


def test_reads_of_many_ids_take_a_read_s_worth_of_tasks() -> None:
    """With 100 ids per read and one task per request, a client submits 100 tasks, then reads them
    in one request; at the end, what it holds."""
    system = CountingSystem(delay=0.01)
    report = drive(system, tasks(150), clients=1, reads="ids")
    assert report.ok
    assert [method for method, *_ in system.seen] == ["POST"] * 100 + ["GET"] + ["POST"] * 50 + ["GET"]
    assert [ids for *_, ids, _ in system.gets(batch=True)] == [100, 50]
    batched = CountingSystem(delay=0.01)
    assert drive(batched, tasks(300), clients=3, batch=100, reads="ids").ok
    assert all(ids <= 100 for *_, ids, _ in batched.gets(batch=True)) and not batched.gets(batch=False)


def test_a_read_whose_wait_ran_out_asks_again() -> None:
    system = CountingSystem(delay=1.0)
    report = drive(system, tasks(4), clients=4, reads="one", wait=0.3)
    assert report.ok
    assert all(task.polls >= 2 for task in report.tasks)


def test_the_last_batches_are_read_by_every_client() -> None:
    """Two batches of 100 and four clients: the two that submitted nothing read from the far end of
    the others' lines, so that more than two connections carry reads."""
    system = CountingSystem(delay=0.2)
    assert drive(system, tasks(200), clients=4, batch=100, reads="one").ok
    assert len({port for *_, port in system.gets(batch=False)}) > 2


def test_busy_is_retried_lost_and_rejected_are_told_apart() -> None:
    system = CountingSystem(delay=0.01, busy=2, forget_type="ghost")
    report = drive(system, [*tasks(6), *tasks(2, "ghost"), *tasks(1, "bad")], clients=1)
    outcomes = [task.outcome for task in report.tasks]
    assert outcomes == ["succeeded"] * 6 + ["lost"] * 2 + ["rejected"]
    assert report.counters["submit_retries"] == 2 and report.counters["poll_not_found"] == 6


def test_the_deadline_ends_the_run() -> None:
    system = CountingSystem(delay=30)
    report = drive(system, tasks(30), clients=2, batch=10, wait=1.0, deadline=1.5)
    outcomes = {task.outcome for task in report.tasks}
    assert outcomes <= {"timeout", "unsubmitted"} and "timeout" in outcomes
    assert report.elapsed < 5


def test_options_are_checked() -> None:
    target = clients.Target("http://127.0.0.1:9/", "http://127.0.0.1:9/")
    for options in ({"clients": 0}, {"batch": 0}, {"reads": "some"}, {"wait": 21}):
        with pytest.raises(ValueError):
            clients.run_load([], target, **options)


def test_a_real_peer_both_ways() -> None:
    """Dramatiq behind its front: every task of a run computed and read, either way of reading."""
    with systems.peer("dramatiq") as peer:
        for batch, reads in ((1, "one"), (100, "one"), (1, "ids"), (100, "ids")):
            report = clients.run_load(systems.light_tasks(200), peer.target, clients=8, batch=batch,
                                      reads=reads, deadline=120)
            summary = report.summary()
            assert summary["ok"], (batch, reads, summary["problems"])
            assert summary["status"]["succeeded"] == 200

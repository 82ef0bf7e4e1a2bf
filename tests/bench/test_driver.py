"""The load generator's engine (bench/driver.py, bench/lanes.py) against a small in-process server
that implements the HTTP contract (no services needed), and `make load-test` driving it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bench import driver, report, workload
from bench.stats import LoadReport

ROOT = Path(__file__).parents[2]

# The engine against a fake system ------------------------------------------------------------------

class FakeSystem:
    """POST /produce, GET /results/{id}?wait=S and GET /results?ids=...&wait=S; tasks end `delay` s
    after submission (`delays` by type), type fail ends failed, tasks of `forget_type` are never
    stored (lost), type bad is refused (400), the first `busy` posts get 503. A task seen before and
    ended is a cache hit, final at once; one seen before and not ended is coalesced: it ends with
    the first. A task with "cache": false is a bypass: computed, and never cached."""

    def __init__(self, delay: float = 0.05, busy: int = 0, forget_type: str | None = None,
                 delays: dict[str, float] | None = None) -> None:
        self.delay, self.busy, self.forget_type = delay, busy, forget_type
        self.delays = delays or {}
        self.ended: dict[str, bool] = {}
        self.followers: dict[str, list[str]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.events: dict[str, asyncio.Event] = {}
        self.posts = 0
        self.batch_sizes: list[int] = []
        self.cache_flags: list[Any] = []  # the "cache" of every task received (True when absent)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/produce", self.produce)
        app.router.add_get("/results/{task_id}", self.result)
        app.router.add_get("/results", self.results)
        return app

    async def produce(self, request: web.Request) -> web.Response:
        self.posts += 1
        if self.posts <= self.busy:
            return web.json_response({"error": "busy"}, status=503)
        body = await request.json()
        items = body.get("tasks", [body])
        replies = []
        for item in items:
            if item.get("type") == "bad":
                return web.json_response({"error": {"code": "unknown_type"}}, status=400)
            self.cache_flags.append(item.get("cache", True))
            task_id = str(uuid.uuid4())
            key: str | None = json.dumps({k: v for k, v in item.items() if k != "cache"}, sort_keys=True)
            if item.get("cache") is False:  # computed, and neither coalesced nor cached
                cache, key = "bypass", None
            else:
                cache = "hit" if self.ended.get(key) else "coalesced" if key in self.ended else "miss"
                self.ended.setdefault(key, False)
            if item.get("type") != self.forget_type:
                self.records[task_id] = {"task_id": task_id, "status": "queued", "submitted_at": 1000}
                self.events[task_id] = asyncio.Event()
                if cache == "hit":
                    self.finish(task_id, item["type"], key)
                elif cache == "coalesced":
                    self.followers.setdefault(key, []).append(task_id)
                else:
                    delay = self.delays.get(item["type"], self.delay)
                    asyncio.get_running_loop().call_later(delay, self.finish, task_id, item["type"], key)
            status = self.records.get(task_id, {}).get("status", "queued")
            replies.append({"task_id": task_id, "status": status, "cache": cache, "existing": False,
                            "result_url": f"/results/{task_id}"})
        return web.json_response({"tasks": replies} if "tasks" in body else replies[0], status=202)

    def finish(self, task_id: str, kind: str, key: str | None) -> None:
        if key is not None:
            self.ended[key] = True
            for follower in self.followers.pop(key, []):
                self.finish(follower, kind, key)
        failed = kind == "fail"
        self.records[task_id].update(status="failed" if failed else "succeeded", worker_id="w-0",
                                     finished_at=1040, **({"error": "as requested"} if failed else {}))
        self.events[task_id].set()

    async def result(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        if task_id not in self.records:
            return web.json_response({"error": {"code": "not_found"}}, status=404)
        wait = float(request.query.get("wait", "0"))
        if self.records[task_id]["status"] not in ("succeeded", "failed") and wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.events[task_id].wait(), wait)
        return web.json_response(self.records[task_id])

    async def results(self, request: web.Request) -> web.Response:
        task_ids = list(dict.fromkeys(request.query["ids"].split(",")))
        self.batch_sizes.append(len(task_ids))
        known = [task_id for task_id in task_ids if task_id in self.records]
        waits = [self.events[task_id].wait() for task_id in known]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), float(request.query.get("wait", "0")) or 1e-9)
        return web.json_response({"results": [self.records[task_id] for task_id in known],
                                  "not_found": [task_id for task_id in task_ids if task_id not in known]})


async def _drive(system: FakeSystem, tasks: list[dict[str, Any]], **options: Any) -> LoadReport:
    runner = web.AppRunner(system.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}/"
    seen: list[driver.Progress] = []
    try:
        return await driver.run_load(tasks, base, base, progress=lambda p: seen.append(p), **options)
    finally:
        assert seen and seen[-1].final
        await runner.cleanup()


@pytest.mark.parametrize("batch", [1, 7])
def test_run_load_against_the_contract(batch: int) -> None:
    tasks = workload.make_tasks(300, seed=3, repeat_share=0.2, include_failures=True)
    system = FakeSystem(busy=0 if batch > 1 else 3)
    result = asyncio.run(_drive(system, tasks, concurrency=8, batch=batch, deadline=30, warmup=batch > 1))
    summary = result.summary()
    assert summary["ok"], summary["problems"]
    assert summary["completed"] == 300
    fails = sum(1 for t in tasks if t["type"] == "fail")
    assert summary["status"]["failed"] == summary["failed"]["expected_type_fail"] == fails
    assert summary["requests"]["submit_retries"] == (0 if batch > 1 else 3)
    assert summary["requests"]["errors"] == ({} if batch > 1 else {"submit: HTTP 503 busy": 3})
    assert summary["requests"]["submissions"] == -(-300 // batch)
    assert system.posts == -(-300 // batch) + summary["requests"]["submit_retries"] + (16 if batch > 1 else 0)
    assert summary["cache"]["hit"] + summary["cache"]["coalesced"] >= 60
    assert summary["latency_ms"]["server_submit_to_finish"]["p50"] == 40.0
    assert summary["workers"] == {"w-0": 300}
    assert summary["throughput"]["server_completed"] == 300
    assert summary["throughput"]["server_window_s"] == pytest.approx(0.04)


def test_results_fetched_many_per_request() -> None:
    tasks = workload.make_tasks(300, seed=5, repeat_share=0.2, include_failures=True)
    system = FakeSystem(delays={"sleep": 0.3})
    result = asyncio.run(_drive(system, tasks, concurrency=4, batch=50, poll_batch=40, deadline=30))
    summary = result.summary()
    assert summary["ok"] and summary["completed"] == 300, summary["problems"]
    assert summary["status"]["failed"] == sum(1 for t in tasks if t["type"] == "fail")
    assert max(system.batch_sizes) == 40
    assert sum(system.batch_sizes) < 2 * 300 and summary["requests"]["polls"] == len(system.batch_sizes)


def test_run_load_reports_lost_rejected_and_deadline() -> None:
    tasks = [{"type": "hash", "payload": {"data": str(i)}} for i in range(20)]
    tasks += [{"type": "gone", "payload": {}}, {"type": "bad", "payload": {}}]
    system = FakeSystem(delay=0.05, forget_type="gone")
    result = asyncio.run(_drive(system, tasks, concurrency=4, deadline=10))
    summary = result.summary()
    assert summary["status"]["lost"] == 1 and summary["status"]["rejected"] == 1
    assert summary["status"]["succeeded"] == 20 and not summary["ok"]

    slow = asyncio.run(_drive(FakeSystem(delay=60), tasks[:5], concurrency=2, deadline=1.0, poll_wait=0.3))
    assert slow.summary()["status"]["timeout"] == 5
    assert slow.elapsed < 3
    # Waits of 0 do not become a busy loop: a long-poller asks at most every MIN_POLL_INTERVAL.
    busy = asyncio.run(_drive(FakeSystem(delay=60), tasks[:5], concurrency=4, deadline=1.0, poll_wait=0))
    assert busy.summary()["status"]["timeout"] == 5
    assert busy.counters["polls"] <= 3 * (1.0 / driver.MIN_POLL_INTERVAL + 1)


def test_run_load_at_a_rate() -> None:
    tasks = [{"type": "hash", "payload": {"data": str(i)}} for i in range(20)]
    result = asyncio.run(_drive(FakeSystem(delay=0.0), tasks, concurrency=4, rate=40.0, deadline=10))
    starts = sorted(r.start for r in result.requests)
    assert result.summary()["ok"]
    assert starts[-1] >= 19 / 40 - 0.02  # the 20th is not sent before its time


def test_a_cache_hit_does_not_wait_behind_parked_long_polls() -> None:
    hit = {"type": "hash", "payload": {"data": "x"}}
    slow = [{"type": "sleep", "payload": {"seconds": i}} for i in range(4)]
    tasks = [hit, *slow, *[dict(hit) for _ in range(5)]]
    system = FakeSystem(delay=0.01, delays={"sleep": 2.0})
    result = asyncio.run(_drive(system, tasks, concurrency=1, poll_concurrency=2, rate=20.0, deadline=10))
    summary = result.summary()
    assert summary["ok"] and summary["cache"]["hit"] == 5
    # Both long-poll slots are parked on the 2 s sleeps while the hits arrive.
    assert summary["submit_to_result_by_cache_ms"]["hit"]["max"] < 500
    assert summary["submit_to_result_by_cache_ms"]["miss"]["max"] > 1500


def test_the_same_work_as_a_task_seen_final_is_fetched_at_once() -> None:
    work = {"type": "hash", "payload": {"data": "x"}}
    slow = [{"type": "sleep", "payload": {"seconds": i}} for i in range(4)]
    tasks = [work, *slow, dict(work)]  # the copy is coalesced with the first and ends with it
    system = FakeSystem(delays={"hash": 0.5, "sleep": 2.5})
    result = asyncio.run(_drive(system, tasks, concurrency=8, poll_concurrency=2, deadline=10))
    summary = result.summary()
    assert summary["ok"] and summary["cache"]["coalesced"] == 1
    assert summary["requests"]["quick_same_work"] == 1
    # The one long-poll slot moves on to the 2.5 s sleeps; the copy does not wait behind them.
    assert result.tasks[-1].latency is not None and result.tasks[-1].latency < 1.5


def test_a_second_run_of_the_same_tasks_is_flagged_and_no_cache_computes_them_all() -> None:
    tasks = workload.make_tasks(60, seed=11, repeat_share=0.2)
    system = FakeSystem(delay=0.01)
    first = asyncio.run(_drive(system, tasks, concurrency=4, deadline=20)).summary()
    assert first["ok"] and first["done_before"]["total"] == 0 and report.reuse_warning(first) is None
    again = asyncio.run(_drive(system, tasks, concurrency=4, deadline=20))
    summary = again.summary()
    assert summary["ok"] and summary["cache"]["hit"] == 60 and summary["done_before"]["hit"] == 60
    text = report.format_summary(again)
    assert "WARNING: 60 of 60 tasks were answered by work from before this run" in text
    uncached = asyncio.run(_drive(system, [{**t, "cache": False} for t in tasks], concurrency=4, deadline=20))
    summary = uncached.summary()
    assert summary["ok"] and summary["cache"]["bypass"] == 60 and summary["done_before"]["total"] == 0


@contextlib.contextmanager
def served(system: FakeSystem) -> Iterator[str]:
    """The fake system on a port of its own, its event loop in a thread, for another process."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(system.app())

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_make_load_test_passes_its_options_on() -> None:
    system = FakeSystem(delay=0.01)
    with served(system) as url:
        def make_load_test(args: str) -> str:
            # -o: the venv and services are taken as they are; what is tested is the recipe.
            done = subprocess.run(["make", "-s", "-o", "venv", "-o", "services", "load-test",
                                   f"ARGS={args} --producer {url} --results {url} --unsigned --no-report "
                                   "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        uncached = make_load_test("-n 40 --seed 5 --no-cache")
        assert system.cache_flags == [False] * 40
        assert "load test: 40 tasks (seed 5, 20% repeats, no cache)" in uncached
        assert "bypass 40" in uncached and "WARNING" not in uncached
        make_load_test("-n 40 --seed 5")
        assert "WARNING: 40 of 40 tasks were answered by work from before this run" in make_load_test(
            "-n 40 --seed 5")
        assert "WARNING" not in make_load_test("-n 40 --seed 6")

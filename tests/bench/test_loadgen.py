"""The load generator's pure parts (percentiles, task generation, summary and report shape) and its
engine against a small in-process server that implements the HTTP contract (no services needed)."""

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

from bench import loadgen, report
from bench.loadgen import LoadReport, RequestSample, TaskOutcome

ROOT = Path(__file__).parents[2]

# Percentiles --------------------------------------------------------------------------------------

def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert loadgen.percentile(values, 50) == 50
    assert loadgen.percentile(values, 90) == 90
    assert loadgen.percentile(values, 99) == 99
    assert loadgen.percentile(values, 100) == 100
    assert loadgen.percentile(values, 0) == 1
    assert loadgen.percentile([3.0, 1.0, 2.0], 50) == 2.0  # order does not matter
    assert loadgen.percentile([7.0], 99) == 7.0
    assert loadgen.percentile([1, 2, 3, 4], 50) == 2
    assert loadgen.percentile([1, 2, 3, 4], 51) == 3
    assert loadgen.percentile([], 50) is None
    with pytest.raises(ValueError):
        loadgen.percentile([1], 101)


def test_latency_stats() -> None:
    stats = loadgen.latency_stats([float(v) for v in range(1000, 0, -1)])
    assert stats == {"count": 1000, "mean": 500.5, "p50": 500.0, "p90": 900.0, "p99": 990.0, "max": 1000.0}
    assert loadgen.latency_stats([])["p50"] is None


# Tasks --------------------------------------------------------------------------------------------

def _key(task: dict[str, Any]) -> str:
    return json.dumps(task, sort_keys=True)


def test_make_tasks_is_reproducible_with_the_repeat_share() -> None:
    from taskcore.producer import generate_tasks

    tasks = loadgen.make_tasks(200, seed=7, repeat_share=0.2)
    assert len(tasks) == 200
    assert tasks == loadgen.make_tasks(200, seed=7, repeat_share=0.2)
    assert tasks != loadgen.make_tasks(200, seed=8, repeat_share=0.2)
    originals = [{"type": s.type, "payload": s.payload, "complexity": s.complexity}
                 for s in generate_tasks(160, 7)]
    # The originals keep their order; the 40 others are copies of an original, after it.
    remaining = [_key(t) for t in tasks]
    positions = []
    for original in originals:
        position = remaining.index(_key(original), positions[-1] + 1 if positions else 0)
        positions.append(position)
    repeats = [i for i in range(200) if i not in set(positions)]
    assert len(repeats) == 40
    for i in repeats:
        first = min(j for j, t in enumerate(tasks) if _key(t) == _key(tasks[i]))
        assert first < i, "a repeat comes after its original"
    assert all(set(t) == {"type", "payload", "complexity"} for t in tasks)
    tasks[0]["payload"]["changed"] = True  # copies, not shared objects
    assert all("changed" not in t["payload"] for t in tasks[1:])


def test_make_tasks_edges() -> None:
    assert loadgen.make_tasks(0, 1) == []
    assert len(loadgen.make_tasks(10, 1, repeat_share=0)) == 10
    everything_repeated = loadgen.make_tasks(5, 1, repeat_share=1)
    assert len({_key(t) for t in everything_repeated}) == 1
    assert any(t["type"] == "fail" for t in loadgen.make_tasks(100, 1, include_failures=True))
    with pytest.raises(ValueError):
        loadgen.make_tasks(10, 1, repeat_share=1.5)


def test_load_tasks(tmp_path: Any) -> None:
    tasks = [{"type": "hash", "payload": {"data": "x"}}]
    (tmp_path / "a.json").write_text(json.dumps(tasks))
    (tmp_path / "b.json").write_text(json.dumps({"tasks": tasks}))
    (tmp_path / "c.json").write_text(json.dumps([1, 2]))
    assert loadgen.load_tasks(tmp_path / "a.json") == tasks
    assert loadgen.load_tasks(tmp_path / "b.json") == tasks
    with pytest.raises(ValueError):
        loadgen.load_tasks(tmp_path / "c.json")


# Summary and report -------------------------------------------------------------------------------

def _synthetic() -> LoadReport:
    tasks = [
        TaskOutcome(0, "primes", 2, "succeeded", "a", 0, 0.0, 0.010, "miss", "queued", 1.0, "w-0", 950.0),
        TaskOutcome(1, "primes", 2, "succeeded", "b", 1, 0.1, 0.110, "hit", "succeeded", 0.115, "", 0.0),
        TaskOutcome(2, "fail", 1, "failed", "c", 2, 0.2, 0.210, "coalesced", "queued", 2.0, "w-1", 1700.0,
                    error="task failed as requested"),
        TaskOutcome(3, "hash", 1, "timeout", "d", 3, 0.3, 0.310, "miss", "queued", error="did not end"),
        TaskOutcome(4, "hash", 1, "unsubmitted", error="deadline"),
    ]
    requests = [RequestSample(i, 1, 0.1 * i, 0.010, 202, 1) for i in range(4)]
    return LoadReport({"tasks": 5, "producer": "http://p/", "results": "http://r/", "concurrency": 2,
                       "poll_concurrency": 2, "batch": 1, "rate": None, "deadline_s": 10.0,
                       "poll_wait_s": 20.0},
                      started_at=1.0, elapsed=3.0, tasks=tasks, requests=requests,
                      counters={"polls": 6, "submit_retries": 1})


def test_summary_counts_and_throughput() -> None:
    summary = _synthetic().summary()
    assert summary["ok"] is False
    assert summary["not_ended"] == 2
    assert summary["status"] == {"succeeded": 2, "failed": 1, "rejected": 0, "lost": 0, "timeout": 1,
                                 "unsubmitted": 1}
    assert summary["failed"] == {"total": 1, "expected_type_fail": 1, "unexpected": 0}
    assert summary["cache"] == {"hit": 1, "coalesced": 1, "miss": 2, "bypass": 0, "existing": 0}
    assert summary["workers"] == {"(cache hit: no worker)": 1, "w-0": 1, "w-1": 1}
    assert summary["submitted"] == 4 and summary["completed"] == 3
    assert summary["throughput"]["submitted_per_s"] == pytest.approx(4 / 0.31, rel=1e-3)
    assert summary["throughput"]["completed_per_s"] == pytest.approx(3 / 2.0)
    assert summary["throughput"]["server_completed"] == 0  # no record gave server times
    assert summary["throughput"]["server_completed_per_s"] is None
    assert summary["latency_ms"]["submit_to_result"]["max"] == pytest.approx(1800.0)
    assert summary["latency_ms"]["submission"]["p50"] == pytest.approx(10.0)
    assert summary["submit_to_result_by_cache_ms"]["hit"]["p50"] == pytest.approx(15.0)
    assert summary["timeline"]["completed"] == [1, 1, 1]
    assert [p["outcome"] for p in summary["problems"]] == ["timeout", "unsubmitted"]
    text = loadgen.format_summary(_synthetic(), summary)
    assert "FAILED: 2 of 5 tasks" in text and "submit-to-result" in text


def test_report_json_shape(tmp_path: Any) -> None:
    result = _synthetic()
    path = report.write_json(result, tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert set(data) == {"config", "started_at", "elapsed_s", "summary", "counters", "server", "requests",
                         "tasks"}
    assert set(data["summary"]) >= {"throughput", "latency_ms", "status", "cache", "workers", "not_ended",
                                    "ok",
                                    "timeline", "failed", "requests"}
    latency = data["summary"]["latency_ms"]["submit_to_result"]
    assert set(latency) == {"count", "mean", "p50", "p90", "p99", "max"}
    assert len(data["tasks"]) == 5 and data["tasks"][0]["task_id"] == "a"


def test_chart(tmp_path: Any) -> None:
    path = report.write_chart(_synthetic(), tmp_path / "r.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    seen: list[loadgen.Progress] = []
    try:
        return await loadgen.run_load(tasks, base, base, progress=lambda p: seen.append(p), **options)
    finally:
        assert seen and seen[-1].final
        await runner.cleanup()


@pytest.mark.parametrize("batch", [1, 7])
def test_run_load_against_the_contract(batch: int) -> None:
    tasks = loadgen.make_tasks(300, seed=3, repeat_share=0.2, include_failures=True)
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
    tasks = loadgen.make_tasks(300, seed=5, repeat_share=0.2, include_failures=True)
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
    assert busy.counters["polls"] <= 3 * (1.0 / loadgen.MIN_POLL_INTERVAL + 1)


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


# Work from before the run -------------------------------------------------------------------------

def _answered(cache: str | None, index: int, same_as: int) -> TaskOutcome:
    return TaskOutcome(index, "hash", 1, "succeeded", f"id{index}", index, 0.0, 0.01, cache, "succeeded",
                       0.02, same_as=same_as)


def _report(tasks: list[TaskOutcome]) -> LoadReport:
    return LoadReport({"tasks": len(tasks), "producer": "http://p/", "results": "http://r/", "concurrency": 1,
                       "poll_concurrency": 1, "batch": 1, "rate": None, "deadline_s": 10.0},
                      started_at=1.0, elapsed=1.0, tasks=tasks, requests=[])


def test_tasks_answered_by_work_from_before_the_run_are_counted() -> None:
    # Group 0: computed in the run (its miss came after the repeat's coalescing: order does not
    # matter). Group 2: all hits, so from before. Group 4: an id that existed. Group 5: a bypass.
    tasks = [_answered("coalesced", 0, 0), _answered("miss", 1, 0), _answered("hit", 2, 2),
             _answered("hit", 3, 2), _answered("existing", 4, 4), _answered("bypass", 5, 5)]
    summary = _report(tasks).summary()
    assert summary["done_before"] == {"total": 3, "hit": 2, "coalesced": 0, "existing": 1}
    assert loadgen.reuse_warning(summary) is None  # 3 of 6 is not most of the run
    text = loadgen.format_summary(_report(tasks), summary)
    assert "WARNING" not in text
    assert "OK: all 6 tasks ended in 1.0 s (3 answered by work from before this run)" in text

    mostly_cached = [*tasks, _answered("hit", 6, 6)]
    summary = _report(mostly_cached).summary()
    assert summary["done_before"]["total"] == 4
    warning = loadgen.reuse_warning(summary)
    assert warning is not None
    assert warning.startswith("WARNING: 4 of 7 tasks were answered by work from before this run")
    assert "--no-cache" in warning and "--seed" in warning
    assert warning in loadgen.format_summary(_report(mostly_cached), summary)
    # A system that reports no cache outcome is never said to have done nothing.
    assert _report([_answered(None, 0, 0)]).summary()["done_before"]["total"] == 0


def test_a_second_run_of_the_same_tasks_is_flagged_and_no_cache_computes_them_all() -> None:
    tasks = loadgen.make_tasks(60, seed=11, repeat_share=0.2)
    system = FakeSystem(delay=0.01)
    first = asyncio.run(_drive(system, tasks, concurrency=4, deadline=20)).summary()
    assert first["ok"] and first["done_before"]["total"] == 0 and loadgen.reuse_warning(first) is None
    again = asyncio.run(_drive(system, tasks, concurrency=4, deadline=20))
    summary = again.summary()
    assert summary["ok"] and summary["cache"]["hit"] == 60 and summary["done_before"]["hit"] == 60
    text = loadgen.format_summary(again)
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

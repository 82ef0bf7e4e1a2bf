"""`make bench`'s other measurements (issue 4), after the comparison of bench/compare.py: the
cache-hit path, worker scaling and memory, on stacks of their own tuned for short tasks (2 workers x
4 threads, PREFETCH_MULTIPLIER 4), driven by bench/driver.py, printed in a table of their own.

Items: 5 cache hits, 6 scaling (400 tasks of 0.5 s on 8 workers, round-robin and shared queue),
7 memory before and after `total` tasks.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from bench import driver, memory, stats
from taskfaas.stack import REDIS_URL, Stack, start_stack, stop_stack

ITEMS = ("cache", "scaling", "memory")
# The load of these items: 16 submitting clients; results fetched 100 per request by 8 clients.
LOAD = {"concurrency": 16, "poll_concurrency": 8, "poll_batch": 100, "warmup": True, "deadline": 600.0}
# One worker per core, 4 threads each, each taking 4 x concurrency from its queue (Celery's default
# for short tasks).
OURS_WORKERS, OURS_CONCURRENCY = 2, 4
PREFETCH_MULTIPLIER = 4


def light_tasks(count: int, complexity: int | None = None) -> list[dict[str, Any]]:
    """Distinct tasks whose own work is negligible (one SHA-256 round of a short string), so the run
    measures the machinery: with TASK_UNIT_SECONDS=0, a generated mix spends ~0.4 ms of CPU per task
    computing primes and hashes, the same for every system. Complexities vary from 1 to 10 unless
    one is given."""
    marker = uuid.uuid4().hex[:12]
    return [{"type": "hash", "payload": {"data": f"{marker}-{i}", "rounds": 1},
             "complexity": complexity or 1 + i % 10} for i in range(count)]


def run_load(tasks: list[dict[str, Any]], producer: str, results: str, batch: int,
             **options: Any) -> dict[str, Any]:
    report = asyncio.run(driver.run_load(tasks, producer, results, batch=batch, **{**LOAD, **options}))
    summary = report.summary()
    throughput, latency = summary["throughput"], summary["latency_ms"]["submit_to_result"]
    return {"tasks": len(tasks), "completed": summary["completed"], "lost": summary["not_ended"],
            "failed": summary["status"]["failed"], "completed_per_s": throughput["completed_per_s"],
            "submitted_per_s": throughput["submitted_per_s"], "makespan_s": throughput["complete_window_s"],
            "p50_ms": latency["p50"], "p99_ms": latency["p99"], "workers": summary["workers"]}


@contextmanager
def our_stack(workers: int = OURS_WORKERS, concurrency: int = OURS_CONCURRENCY, unit_seconds: float = 0.0,
              **template: str) -> Iterator[Stack]:
    env = {"TASK_UNIT_SECONDS": str(unit_seconds), "TaskUnitSeconds": str(unit_seconds),
           "PREFETCH_MULTIPLIER": str(PREFETCH_MULTIPLIER), **template}
    stack = start_stack(Path(tempfile.mkdtemp(prefix="bench-")), workers=workers, concurrency=concurrency,
                        extra_env=env, namespace_prefix="bench")
    try:
        yield stack
    finally:
        stop_stack(stack)


def bench_cache_hits(samples: int = 300) -> dict[str, Any]:
    """The same task submitted again once its result is cached: POST /produce answers a hit with the
    result (a GET /results/{id} follows only if it did not); on kept-alive connections."""
    import urllib3

    with our_stack() as stack:
        pool = urllib3.PoolManager(maxsize=2)
        task = {"type": "hash", "payload": {"data": f"cache-{uuid.uuid4().hex}", "rounds": 3}}
        body = json.dumps(task).encode()
        first = json.loads(pool.request("POST", stack.producer + "produce", body=body,
                                        headers={"Content-Type": "application/json"}).data)
        stack.wait_final(first["task_id"])
        latencies, caches = [], set()
        for _ in range(samples):
            started = time.perf_counter()
            record = json.loads(pool.request("POST", stack.producer + "produce", body=body,
                                             headers={"Content-Type": "application/json"}).data)
            caches.add(record.get("cache"))
            if "result" not in record:  # not answered with its result: fetch it, as a client would
                url = f"{stack.supervisor}results/{record['task_id']}"
                record = json.loads(pool.request("GET", url, headers=stack.signer.headers("GET", url)).data)
            latencies.append((time.perf_counter() - started) * 1000)
            if record.get("status") != "succeeded":
                raise RuntimeError(f"a cache hit that is not final: {record}")
    figures = stats.latency_stats(latencies)
    return {"system": "ours", "mode": "cache hit", "tasks": samples, "p50_ms": round(figures["p50"], 2),
            "p99_ms": round(figures["p99"], 2), "cache_outcomes": sorted(map(str, caches)),
            "settings": "POST /produce answering the hit with its result, sequential"}


def bench_scaling(tasks: int = 400, seconds: float = 0.5, workers: int = 8) -> list[dict[str, Any]]:
    ideal = tasks * seconds / workers
    rows = []
    for mode in ("round_robin", "shared"):
        with our_stack(workers=workers, concurrency=1, unit_seconds=seconds, DispatchMode=mode,
                       DISPATCH_MODE=mode) as stack:
            figures = run_load(light_tasks(tasks, complexity=1), stack.producer, stack.supervisor, 100,
                               concurrency=4, signer=stack.signer)
        busiest = max(figures.pop("workers").values(), default=0)
        rows.append({"system": "ours", "mode": f"scaling, {mode}", **figures, "ideal_s": ideal,
                     "over_ideal_pct": round(100 * (figures["makespan_s"] / ideal - 1), 1),
                     "busiest_worker_tasks": busiest,
                     "settings": f"{tasks} tasks x {seconds} s on {workers} workers x 1"})
        print(f"  scaling {mode}: {figures['makespan_s']} s (ideal {ideal:g} s)", flush=True)
    for task in rows:
        task["tasks"] = tasks
    return rows


def bench_memory(total: int) -> dict[str, Any]:
    """Resident memory of the whole stack (localfaas, its execution environments, the fleet) and
    Redis's used memory, after a warm-up, after 5,000 tasks and after `total`."""
    client = redis.Redis.from_url(REDIS_URL)
    with our_stack() as stack:
        pids = [stack.host.process.pid, stack.fleet.pid]
        run_load(light_tasks(1000), stack.producer, stack.supervisor, 100, signer=stack.signer)
        points = {"warm": memory.snapshot(pids, client)}
        done = 1000
        marks = [mark for mark in (5000,) if done < mark < total] + [max(total, done + 1)]
        for mark in marks:
            run_load(light_tasks(mark - done), stack.producer, stack.supervisor, 100, signer=stack.signer)
            done = mark
            points[f"after {mark}"] = memory.snapshot(pids, client)
        untimed = memory.keys_without_ttl(client, stack.namespace)
    first, last = points[f"after {marks[0]}"], points[f"after {marks[-1]}"]
    growth = round(100 * (last["stack_rss_mb"] / first["stack_rss_mb"] - 1), 1)
    print(f"  memory: stack {first['stack_rss_mb']} -> {last['stack_rss_mb']} MB ({growth:+} %)", flush=True)
    return {"system": "ours", "mode": "memory", "tasks": marks[-1], "points": points,
            "stack_growth_5k_to_end_pct": growth, "keys_without_ttl": untimed,
            "settings": f"{OURS_WORKERS} workers x {OURS_CONCURRENCY}; RSS of host + environments + fleet"}


def run(items: set[str], memory_tasks: int) -> list[dict[str, Any]]:
    """The items asked for, in ITEMS' order."""
    rows: list[dict[str, Any]] = []
    for name in ITEMS:
        if name in items:
            print(f"bench: {name}", flush=True)
            if name == "cache":
                rows.append(bench_cache_hits())
            elif name == "scaling":
                rows += bench_scaling()
            else:
                rows.append(bench_memory(memory_tasks))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| system | mode | tasks | completed tasks/s | p50 ms | p99 ms | figures and settings |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        extra = ""
        if "over_ideal_pct" in row:
            extra = (f"makespan {row['makespan_s']} s, ideal {row['ideal_s']:g} s "
                     f"({row['over_ideal_pct']:+} %); ")
        if "stack_growth_5k_to_end_pct" in row:
            points = row["points"]
            extra = ("RSS MB " + " / ".join(f"{k} {v['stack_rss_mb']}" for k, v in points.items())
                     + f" ({row['stack_growth_5k_to_end_pct']:+} % from 5,000 or the first mark); Redis MB "
                     + " / ".join(str(v["redis_used_mb"]) for v in points.values())
                     + f"; keys without TTL: {row['keys_without_ttl']}; ")
        lines.append(f"| {row['system']} | {row['mode']} | {row.get('tasks', '')} "
                     f"| {_cell(row.get('completed_per_s'))} | {_cell(row.get('p50_ms'))} "
                     f"| {_cell(row.get('p99_ms'))} | {extra}{row.get('settings', '')} |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if isinstance(value, float) and value >= 100 else str(value)

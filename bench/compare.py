"""`make bench` (issue 4): our system against Celery 5 and Dramatiq 2 on this machine, in one run,
with the same load generator (bench/driver.py) and TASK_UNIT_SECONDS=0, then the cache-hit path,
worker scaling and memory. Prints one table and writes bench/reports/bench-<time>.json.

    python bench/compare.py [--tasks 5000] [--memory-tasks 20000] [--only ours,celery,...]

Items: 1 ours one task per request, 2 ours batches of 100, 3 Celery, 4 Dramatiq (each both ways,
behind the gunicorn fronts of bench/peers), 5 cache hits, 6 scaling (400 tasks of 0.5 s on 8
workers, round-robin and shared queue), 7 memory before and after --memory-tasks tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench import driver, memory, stats  # noqa: E402
from taskfaas.stack import REDIS_URL, Stack, start_stack, stop_stack  # noqa: E402

REPORTS = ROOT / "bench" / "reports"
ITEMS = ("ours", "celery", "dramatiq", "cache", "scaling", "memory")
# The same shape of load for every system: 16 submitting clients; results fetched 100 per request
# by 8 clients (GET /results?ids=..., which the peers' fronts serve too).
LOAD = {"concurrency": 16, "poll_concurrency": 8, "poll_batch": 100, "warmup": True, "deadline": 600.0}
# Slots per system: each as its documentation recommends on 2 cores. Ours: one worker per core,
# 4 threads each; Celery: prefork, one process per core (its default concurrency); Dramatiq: one
# process per core with its default 8 threads.
OURS_WORKERS, OURS_CONCURRENCY = 2, 4
# Tuned for short tasks, as Celery's default: each worker takes 4 x concurrency from its queue.
PREFETCH_MULTIPLIER = 4
PEER_SLOTS = {"celery": {"workers": 2, "threads": 1}, "dramatiq": {"workers": 2, "threads": 8}}


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


def both_ways(name: str, producer: str, results: str, count: int, **options: Any) -> list[dict[str, Any]]:
    rows = []
    for batch in (1, 100):
        figures = run_load(light_tasks(count), producer, results, batch, **options)
        rows.append({"system": name, "mode": "1 per request" if batch == 1 else "batches of 100", **figures})
        print(f"  {name}, {rows[-1]['mode']}: {figures['completed_per_s']} tasks/s", flush=True)
    return rows


def bench_ours(count: int) -> list[dict[str, Any]]:
    with our_stack() as stack:
        rows = both_ways("ours", stack.producer, stack.supervisor, count, signer=stack.signer)
    for row in rows:
        row["settings"] = (f"{OURS_WORKERS} workers x {OURS_CONCURRENCY} threads, PREFETCH_MULTIPLIER="
                           f"{PREFETCH_MULTIPLIER}, quorum queues, confirms, localfaas (python3.12)")
    return rows


def bench_peer(name: str, count: int) -> list[dict[str, Any]]:
    from bench.peers.run import start_peer  # the peers' libraries only when a peer is asked for

    with start_peer(name, unit_seconds=0.0, **PEER_SLOTS[name]) as peer:
        about = peer.describe()
        rows = both_ways(name, peer.url, peer.url, count)
    slots = PEER_SLOTS[name]
    for row in rows:
        row["settings"] = (f"{name} {about['version']}, {slots['workers']} x {slots['threads']} slots, "
                           f"gunicorn {about['gunicorn']} gthread 2x16 (bench/peers/README.md)")
    return rows


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
        for mark in (5000, total):
            run_load(light_tasks(mark - done), stack.producer, stack.supervisor, 100, signer=stack.signer)
            done = mark
            points[f"after {mark}"] = memory.snapshot(pids, client)
        untimed = memory.keys_without_ttl(client, stack.namespace)
    first, last = points["after 5000"], points[f"after {total}"]
    growth = round(100 * (last["stack_rss_mb"] / first["stack_rss_mb"] - 1), 1)
    print(f"  memory: stack {first['stack_rss_mb']} -> {last['stack_rss_mb']} MB ({growth:+} %)", flush=True)
    return {"system": "ours", "mode": "memory", "tasks": total, "points": points,
            "stack_growth_5k_to_end_pct": growth, "keys_without_ttl": untimed,
            "settings": f"{OURS_WORKERS} workers x {OURS_CONCURRENCY}; RSS of host + environments + fleet"}


def ratio(ours: dict[str, Any], peer: dict[str, Any]) -> float | None:
    if ours.get("completed_per_s") and peer.get("completed_per_s"):
        return round(ours["completed_per_s"] / peer["completed_per_s"], 2)
    return None


def table(rows: list[dict[str, Any]]) -> str:
    ours = {row["mode"]: row for row in rows if row["system"] == "ours"}
    lines = ["| # | system | mode | tasks | completed tasks/s | p50 ms | p99 ms | ours / this | settings |",
             "|---|---|---|---|---|---|---|---|---|"]
    numbers = {("ours", "1 per request"): "1", ("ours", "batches of 100"): "2", ("celery", None): "3",
               ("dramatiq", None): "4", ("ours", "cache hit"): "5", ("ours", "memory"): "7"}
    for row in rows:
        number = numbers.get((row["system"], row["mode"])) or numbers.get((row["system"], None)) or "6"
        versus = ratio(ours.get(row["mode"], {}), row) if row["system"] != "ours" else None
        extra = ""
        if "over_ideal_pct" in row:
            extra = (f"makespan {row['makespan_s']} s, ideal {row['ideal_s']:g} s "
                     f"({row['over_ideal_pct']:+} %); ")
        if "stack_growth_5k_to_end_pct" in row:
            points = row["points"]
            extra = ("RSS MB " + " / ".join(f"{k} {v['stack_rss_mb']}" for k, v in points.items())
                     + f" ({row['stack_growth_5k_to_end_pct']:+} % from 5,000); Redis MB "
                     + " / ".join(str(v["redis_used_mb"]) for v in points.values())
                     + f"; keys without TTL: {row['keys_without_ttl']}; ")
        lines.append(f"| {number} | {row['system']} | {row['mode']} | {row.get('tasks', '')} "
                     f"| {_cell(row.get('completed_per_s'))} | {_cell(row.get('p50_ms'))} "
                     f"| {_cell(row.get('p99_ms'))} | {_cell(versus)} | {extra}{row.get('settings', '')} |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if isinstance(value, float) and value >= 100 else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per throughput run (items 1-4)")
    parser.add_argument("--memory-tasks", type=int, default=20000, help="tasks of the memory run (item 7)")
    parser.add_argument("--only", default=",".join(ITEMS), help=f"comma-separated subset of {ITEMS}")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if unknown := only - set(ITEMS):
        parser.error(f"unknown items: {', '.join(sorted(unknown))}")
    steps: dict[str, Callable[[], Any]] = {
        "ours": lambda: bench_ours(args.tasks), "celery": lambda: bench_peer("celery", args.tasks),
        "dramatiq": lambda: bench_peer("dramatiq", args.tasks), "cache": bench_cache_hits,
        "scaling": bench_scaling, "memory": lambda: bench_memory(args.memory_tasks)}
    rows: list[dict[str, Any]] = []
    started = time.time()
    for name in ITEMS:
        if name in only:
            print(f"bench: {name}", flush=True)
            result = steps[name]()
            rows += result if isinstance(result, list) else [result]
    print()
    print(f"Benchmark on {os.cpu_count()} cores, load average before/after in the JSON; "
          f"{args.tasks} light tasks per throughput run, TASK_UNIT_SECONDS=0")
    print(table(rows))
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"
    path.write_text(json.dumps({"started_at": started, "argv": sys.argv[1:] if argv is None else argv,
                                "load": LOAD, "rows": rows, "loadavg_end": os.getloadavg()}, indent=2))
    print(f"report: {path.relative_to(ROOT)}")
    lost = sum(row.get("lost", 0) for row in rows)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())

"""Quick check of a peer: correctness of mixed tasks, then rough throughput (TASK_UNIT_SECONDS=0).

    python -m bench.peers.check celery dramatiq [--verify 200] [--count 5000] [--concurrency 16]
    python -m bench.peers.check --url http://127.0.0.1:PORT   # a peer (or ours) already running

Verify: `--verify` generated tasks (with failures), half one per request, half as batches of 100;
every result must equal taskcore.registry.execute's (or its TaskFailed message).
Throughput: `--count` tasks one per request, then in batches of `--batch`, each with `--concurrency`
clients; submission first, then every result fetched with long-polls. completed/s = count / (time
from the first submission to the last result). Sleep tasks sleep for real what their payload says
(generate_tasks: at most 10 ms), whatever TASK_UNIT_SECONDS is; --no-sleep makes them 0 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import aiohttp

from taskcore import registry, work
from taskcore.messages import TaskSpec
from taskcore.producer import generate_tasks


def expected(spec: TaskSpec) -> dict[str, Any]:
    try:
        result = registry.execute(spec.type, spec.payload)
        return {"status": "succeeded", "result": json.loads(json.dumps(result))}
    except work.TaskFailed as error:
        return {"status": "failed", "error": str(error)}


def as_body(spec: TaskSpec) -> dict[str, Any]:
    return {"type": spec.type, "payload": spec.payload, "complexity": spec.complexity}


async def _bounded(items: Sequence[Any], limit: int, call: Callable[[Any], Awaitable[Any]]) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(item: Any) -> Any:
        async with semaphore:
            return await call(item)

    return await asyncio.gather(*(one(item) for item in items))


async def submit(session: aiohttp.ClientSession, url: str, specs: Sequence[TaskSpec], batch: int,
                 concurrency: int) -> list[str]:
    """Task ids in the order of `specs`; batch 0 or 1 means one task per request."""
    async def post(chunk: Sequence[TaskSpec]) -> list[str]:
        body = {"tasks": [as_body(s) for s in chunk]} if batch > 1 else as_body(chunk[0])
        async with session.post(f"{url}/produce", json=body) as response:
            reply = await response.json()
            if response.status != 202:
                raise RuntimeError(f"POST /produce: {response.status} {reply}")
        return [item["task_id"] for item in reply["tasks"]] if batch > 1 else [reply["task_id"]]

    size = max(batch, 1)
    chunks = [specs[i:i + size] for i in range(0, len(specs), size)]
    return [task_id for ids in await _bounded(chunks, concurrency, post) for task_id in ids]


async def collect(session: aiohttp.ClientSession, url: str, task_ids: Sequence[str], concurrency: int,
                  deadline: float) -> list[dict[str, Any]]:
    async def fetch(task_id: str) -> dict[str, Any]:
        while time.monotonic() < deadline:
            async with session.get(f"{url}/results/{task_id}", params={"wait": "10"}) as response:
                record = await response.json()
            if record.get("status") in ("succeeded", "failed"):
                return record
        return {"task_id": task_id, "status": "lost"}

    return await _bounded(task_ids, concurrency, fetch)


async def verify(url: str, count: int, concurrency: int) -> list[str]:
    """Problems found (empty when every result matches)."""
    specs = generate_tasks(count, seed=4, include_failures=True)
    half = count // 2
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        ids = await submit(session, url, specs[:half], 1, concurrency)
        ids += await submit(session, url, specs[half:], 100, concurrency)
        records = await collect(session, url, ids, concurrency, time.monotonic() + 120)
    problems = []
    for spec, task_id, record in zip(specs, ids, records, strict=True):
        want = {"task_id": task_id, **expected(spec)}
        if record != want:
            problems.append(f"{spec.type} {spec.payload}: got {record}, want {want}")
    return problems


def workload(count: int, no_sleep: bool) -> list[TaskSpec]:
    specs = generate_tasks(count, seed=7)
    if no_sleep:
        specs = [replace(s, payload={"seconds": 0}) if s.type == "sleep" else s for s in specs]
    return specs


async def throughput(url: str, specs: Sequence[TaskSpec], batch: int, concurrency: int) -> dict[str, Any]:
    count = len(specs)
    load_before = os.getloadavg()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.monotonic()
        ids = await submit(session, url, specs, batch, concurrency)
        submitted = time.monotonic() - started
        records = await collect(session, url, ids, concurrency, started + 600)
        elapsed = time.monotonic() - started
    lost = sum(1 for record in records if record["status"] not in ("succeeded", "failed"))
    return {"mode": f"batch {batch}" if batch > 1 else "one per request", "tasks": count,
            "concurrency": concurrency, "submitted_per_s": round(count / submitted),
            "completed_per_s": round(count / elapsed), "seconds": round(elapsed, 2), "lost": lost,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


async def check(url: str, args: argparse.Namespace) -> bool:
    problems = await verify(url, args.verify, args.concurrency) if args.verify else []
    print(f"  verify {args.verify} tasks: {'OK' if not problems else f'{len(problems)} wrong'}", flush=True)
    for problem in problems[:5]:
        print("   ", problem)
    for batch in (1, args.batch):
        if args.count:
            figures = await throughput(url, workload(args.count, args.no_sleep), batch, args.concurrency)
            print("  ", json.dumps({"no_sleep": args.no_sleep, **figures}), flush=True)
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peers", nargs="*", help="celery and/or dramatiq (default both)")
    parser.add_argument("--url", help="check an already running system at this base URL instead")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, help="slots per worker, see run.start_peer")
    parser.add_argument("--no-sleep", action="store_true", help="sleep tasks sleep 0 s")
    parser.add_argument("--verify", type=int, default=200)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.url:
        return 0 if asyncio.run(check(args.url.rstrip("/"), args)) else 1
    from bench.peers.run import start_peer  # here, so that --url needs no peer libraries

    ok = True
    for name in args.peers or ["celery", "dramatiq"]:
        with start_peer(name, workers=args.workers, unit_seconds=0.0, threads=args.threads) as handle:
            about = handle.describe()
            print(f"{name} {about['version']} at {handle.url}, {args.workers} workers x {handle.env.threads} "
                  f"slots, gunicorn {about['gunicorn']} {about['front']}", flush=True)
            ok = asyncio.run(check(handle.url, args)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

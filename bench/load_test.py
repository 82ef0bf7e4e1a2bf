"""First version of the load test: sends N generated tasks through the producer's URL, waits for
every result with long-polls and prints how they ended. Needs `make run` in another terminal.

    python bench/load_test.py [--count 100] [--seed 1] [--concurrency 16] [--producer URL]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from taskcore.producer import generate_tasks


def post(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_for(result_url: str, deadline: float) -> dict:
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{result_url}?wait=10", timeout=30) as response:
            record = json.loads(response.read())
        if record["status"] in ("succeeded", "failed"):
            return record
    return {"status": "lost (deadline passed)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole run")
    parser.add_argument("--producer", help="producer URL (default: from .localfaas/state.json)")
    args = parser.parse_args()
    producer = args.producer or json.loads(Path(".localfaas/state.json").read_text())["urls"]["Producer"]
    tasks = [{"type": s.type, "payload": s.payload, "complexity": s.complexity}
             for s in generate_tasks(args.count, args.seed)]
    started = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        replies = list(pool.map(lambda task: post(producer.rstrip("/") + "/produce", task), tasks))
        submitted = time.monotonic() - started
        accepted = [reply for status, reply in replies if status in (200, 202)]
        deadline = started + args.deadline
        records = list(pool.map(lambda reply: wait_for(reply["result_url"], deadline), accepted))
    elapsed = time.monotonic() - started
    ideal = sum(t["complexity"] for t in tasks)
    print(f"{args.count} tasks: submitted in {submitted:.1f}s, all ended in {elapsed:.1f}s "
          f"({args.count / elapsed:.1f} tasks/s); total complexity {ideal} units")
    print("refused at submission:", Counter(status for status, _ in replies if status not in (200, 202)))
    print("cache outcomes:      ", dict(Counter(reply["cache"] for reply in accepted)))
    print("final status:        ", dict(Counter(record["status"] for record in records)))
    print("tasks per worker:    ", dict(Counter(r.get("worker_id") for r in records)))
    lost = len(tasks) - sum(1 for r in records if r["status"] in ("succeeded", "failed"))
    print(f"lost or unfinished:   {lost}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())

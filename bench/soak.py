"""`make soak` (issue 5): tasks at a steady rate for a long while, with a worker SIGKILLed every few
seconds, then every task accounted for: succeeded, failed with its reason, or dead-lettered, and
nothing lost; tasks computed more than once are counted, with those a kill explains apart.

    python bench/soak.py [--tasks 50000] [--rate 120] [--kill-every 3] [--workers 4]

Exits 1 if a task was lost (no final status by the deadline) or computed twice without a kill to
explain it. Writes bench/reports/soak-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import driver, stats  # noqa: E402
from bench.extras import light_tasks  # noqa: E402
from taskfaas.stack import Stack, start_stack, stop_stack  # noqa: E402

REPORTS = ROOT / "bench" / "reports"
FAIL_SHARE = 0.02  # tasks of type fail: they must end failed, with their reason


def soak_tasks(count: int, seed: int) -> list[dict[str, Any]]:
    """Distinct light tasks, a share of them `fail` tasks with a message of their own."""
    rng = random.Random(seed)
    tasks = light_tasks(count)
    for index in range(len(tasks)):
        if rng.random() < FAIL_SHARE:
            tasks[index] = {"type": "fail", "payload": {"message": f"soak failure {index}"}, "complexity": 1}
    return tasks


class Killer(threading.Thread):
    """SIGKILLs a random live worker every `every` seconds (the fleet restarts it)."""

    def __init__(self, stack: Stack, every: float) -> None:
        super().__init__(name="killer", daemon=True)
        self.stack, self.every = stack, every
        self.kills: list[tuple[float, int, str]] = []  # (time, pid, worker id)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                live = self.stack.workers()["workers"]
            except Exception:  # the supervisor busy or restarting: try again next round
                continue
            if not live:
                continue
            victim = random.choice(live)
            try:
                os.kill(int(victim["pid"]), signal.SIGKILL)
            except (ProcessLookupError, KeyError, ValueError):
                continue
            self.kills.append((time.time(), int(victim["pid"]), victim["worker_id"]))


def account(outcomes: Sequence[stats.TaskOutcome], executions: Sequence[dict[str, Any]],
            killed_pids: set[int]) -> dict[str, Any]:
    """Where every task ended, and which attempts were computed more than once: `explained` when
    an earlier run of it was on a process that was later killed (its ack never reached the broker,
    which delivered the task again), `unexplained` otherwise."""
    statuses = Counter(task.outcome for task in outcomes)
    failed_reasons = Counter((task.error or "")[:60] for task in outcomes if task.outcome == "failed")
    # By attempt: a failed attempt's retry is a new attempt, not a second computation of the same.
    runs: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for entry in executions:
        if entry.get("status") != "cancelled":
            runs[(entry["task_id"], entry.get("attempt", 1))].append(entry)
    ids = {task.task_id for task in outcomes if task.task_id}
    twice = {key: entries for key, entries in runs.items() if len(entries) > 1 and key[0] in ids}
    explained = {key for key, entries in twice.items()
                 if any(entry.get("pid") in killed_pids for entry in entries[:-1])}
    return {"tasks": len(outcomes), "statuses": dict(statuses),
            "lost": sum(statuses.get(name, 0) for name in stats.NOT_ENDED),
            "failed_reasons": dict(failed_reasons.most_common(5)),
            "computed_more_than_once": len(twice), "explained_by_a_kill": len(explained),
            "unexplained": sorted(f"{task_id} attempt {attempt}"
                                  for task_id, attempt in set(twice) - explained)[:20]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=120.0, help="tasks per second, steady")
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between worker kills")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--unit-seconds", type=float, default=0.0, help="TASK_UNIT_SECONDS")
    args = parser.parse_args(argv)
    tasks = soak_tasks(args.tasks, seed=7)
    expected_failures = sum(1 for task in tasks if task["type"] == "fail")
    deadline = args.tasks / args.rate + 300
    print(f"soak: {args.tasks} tasks at {args.rate:g}/s (about {args.tasks / args.rate:.0f} s), "
          f"a worker killed every {args.kill_every:g} s, {args.workers} workers", flush=True)
    stack = start_stack(Path(tempfile.mkdtemp(prefix="soak-")), workers=args.workers,
                        extra_env={"TASK_UNIT_SECONDS": str(args.unit_seconds),
                                   "TaskUnitSeconds": str(args.unit_seconds)}, namespace_prefix="soak")
    killer = Killer(stack, args.kill_every)
    try:
        killer.start()
        report = asyncio.run(driver.run_load(
            tasks, stack.producer, stack.supervisor, concurrency=16, batch=1, rate=args.rate,
            deadline=deadline, poll_concurrency=8, poll_batch=100, signer=stack.signer))
        killer.stopping.set()
        killer.join()
        queues = stack.stats().get("queues") or {}
        dead = {name: depth for name, depth in queues.items() if name.endswith(".dead")}
        accounting = account(report.tasks, stack.executions(), {pid for _, pid, _ in killer.kills})
    finally:
        killer.stopping.set()
        stop_stack(stack)
    accounting.update(kills=len(killer.kills), dead_lettered=dead, expected_failures=expected_failures,
                      elapsed_s=round(report.elapsed, 1))
    print(json.dumps(accounting, indent=2))
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"argv": sys.argv[1:] if argv is None else argv, **accounting}, indent=2))
    print(f"report: {path.relative_to(ROOT)}")
    ok = accounting["lost"] == 0 and not accounting["unexplained"]
    ok = ok and accounting["statuses"].get("failed", 0) == expected_failures
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

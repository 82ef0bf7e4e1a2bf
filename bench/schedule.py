"""`make bench-schedule` (issue 12): how close each dispatch mode comes to the ideal makespan, for the
load test's mix and for mixes built to hurt round-robin. Prints one table; writes
bench/reports/schedule-<time>.json.

    python bench/schedule.py [--unit-seconds 0.5] [--only default,spread,one-long,slow,joins]
        [--modes stealing,round_robin,shared] [--keep DIR]

Each mix is 100 distinct tasks sent with "cache": false (so every one is computed), one per
request from 16 clients, to a stack of 4 workers x 2 slots (worker_fleet's defaults):

- default: the load test's tasks (seed 1: complexities 1..5, its repeats computed too);
- spread: complexities drawn 1..10;
- one-long: one task of complexity 10 among 99 of complexity 1, at a random place (seed 1);
- slow: the load test's tasks, one of the 4 workers at half speed (its TASK_UNIT_SECONDS doubled);
- joins: the load test's tasks, 3 workers at first and the 4th joining halfway to the ideal.

Modes: stealing (round-robin, WORK_STEALING on: what `make run` runs), round_robin (WORK_STEALING
off: the round-robin alone, as before issue 12) and shared (DISPATCH_MODE=shared: one queue that
every worker takes from). The ideal is bench/makespan.py's, with the capacity each mix really had:
a half-speed worker's slots count one half each, and a worker that joins adds its slots from then.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import driver, makespan, report, stats, workload  # noqa: E402
from bench.load_test import run_loop  # noqa: E402
from taskfaas.stack import Stack, start_stack, stop_stack, terminated_with_parent  # noqa: E402
from worker_fleet.fleet import DEFAULT_CONCURRENCY, DEFAULT_WORKERS  # noqa: E402

MODES = {"stealing": ("round_robin", "on"), "round_robin": ("round_robin", "off"), "shared": ("shared", "on")}
MIXES = ("default", "spread", "one-long", "slow", "joins")
COUNT = 100
SLOTS = DEFAULT_WORKERS * DEFAULT_CONCURRENCY
CLIENTS = 16


def tasks_for(mix: str) -> list[dict[str, Any]]:
    """100 tasks, each sent with cache off; the same list for every mode."""
    rng = random.Random(1)
    if mix in ("default", "slow", "joins"):
        tasks = workload.make_tasks(COUNT, seed=1)
    elif mix == "spread":
        tasks = [{"type": "sleep", "payload": {"seconds": i / 1e6}, "complexity": rng.randint(1, 10)}
                 for i in range(COUNT)]
    elif mix == "one-long":
        tasks = [{"type": "sleep", "payload": {"seconds": i / 1e6}, "complexity": 1} for i in range(COUNT)]
        tasks[rng.randrange(COUNT)]["complexity"] = 10
    else:
        raise ValueError(f"unknown mix {mix!r}")
    return [{**task, "cache": False} for task in tasks]


def join_at(work: float) -> float:
    """When the joining worker starts: halfway to the ideal of the full fleet."""
    return work / SLOTS / 2


def ideal_seconds(mix: str, work: float, joined: float | None = None) -> float:
    """The least time `work` simulated seconds can take on the capacity the mix has: a half-speed
    worker's slots count one half; a worker that joins adds its slots from `joined` seconds after
    the first submission on (when it was started: its boot counts against the run)."""
    if mix == "slow":
        return work / (SLOTS - DEFAULT_CONCURRENCY / 2)
    if mix == "joins":
        at_first, start = SLOTS - DEFAULT_CONCURRENCY, max(0.0, join_at(work) if joined is None else joined)
        return work / at_first if at_first * start >= work else start + (work - at_first * start) / SLOTS
    return work / SLOTS


def bounds(mix: str, tasks: list[dict[str, Any]], unit: float) -> dict[str, float | None]:
    """What a perfect dispatcher would reach on this list, over the ideal: first in, first out (every
    slot starting the next task the moment it is free) and longest first. None for `joins`, whose
    capacity changes during the run."""
    if mix == "joins":
        return {"fifo_bound": None, "longest_first_bound": None}
    halved = DEFAULT_CONCURRENCY if mix == "slow" else 0  # the half-speed worker's slots
    speeds = [1.0] * (SLOTS - halved) + [0.5] * halved
    durations = [task["complexity"] * unit for task in tasks]
    ideal = ideal_seconds(mix, sum(durations))
    return {"fifo_bound": round(makespan.list_schedule(durations, speeds) / ideal, 4),
            "longest_first_bound": round(makespan.list_schedule(sorted(durations, reverse=True), speeds)
                                         / ideal, 4)}


@dataclass
class Fleets:
    """The worker fleets of one run (each a `python -m worker_fleet` with an id prefix of its own)."""

    stack: Stack
    run_dir: Path
    processes: list[subprocess.Popen[bytes]]

    def start(self, prefix: str, workers: int, delay: float = 0.0, **env: str) -> None:
        """Starts a fleet now, or `delay` seconds from now (a shell sleeps first: the process must
        be started from the main thread, as terminated_with_parent says)."""
        log = (self.run_dir / f"fleet-{prefix}.log").open("ab")
        command = [sys.executable, "-m", "worker_fleet", "--workers", str(workers), "--concurrency",
                   str(DEFAULT_CONCURRENCY), "--id-prefix", prefix, "--grace", "5"]
        if delay:
            command = ["sh", "-c", f'sleep {delay:.3f} && exec "$@"', "sh", *command]
        self.processes.append(subprocess.Popen(
            command, cwd=ROOT, env={**self.stack.env, **env}, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=terminated_with_parent))

    def wait_connected(self, count: int, timeout: float = 30) -> None:
        """Until `count` workers of these fleets consume (their logs' `connected`): /workers would
        still list the last mix's workers, which had the same ids."""
        deadline = time.monotonic() + timeout
        logs = lambda: self.run_dir.glob("*.log")  # noqa: E731
        while sum(path.read_text().count('"event":"connected"') for path in logs()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers not connected after {timeout:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes = []


def run_mix(stack: Stack, run_dir: Path, mix: str, stealing: str, unit: float) -> dict[str, Any]:
    """One mix on `stack` with fresh fleets; the run's makespan against the ideal of its capacity."""
    tasks = tasks_for(mix)
    fleets = Fleets(stack, run_dir / mix, [])
    fleets.run_dir.mkdir(parents=True, exist_ok=True)
    env = {"WORK_STEALING": stealing, "TASK_UNIT_SECONDS": str(unit)}
    work = makespan.simulated_work((t["complexity"] for t in tasks), unit)
    joins_at: float | None = None  # epoch seconds
    if mix == "slow":
        fleets.start("w", DEFAULT_WORKERS - 1, **env)
        fleets.start("slow", 1, **{**env, "TASK_UNIT_SECONDS": str(2 * unit)})
        fleets.wait_connected(DEFAULT_WORKERS)
    elif mix == "joins":
        fleets.start("w", DEFAULT_WORKERS - 1, **env)
        fleets.wait_connected(DEFAULT_WORKERS - 1)
        fleets.start("late", 1, delay=join_at(work), **env)
        joins_at = time.time() + join_at(work)
    else:
        fleets.start("w", DEFAULT_WORKERS, **env)
        fleets.wait_connected(DEFAULT_WORKERS)
    try:
        # Warm-up: the functions' environments started first (not timed), as a stack in use has them.
        result = run_loop(driver.run_load(tasks, stack.producer, stack.supervisor, concurrency=CLIENTS,
                                          deadline=600, signer=stack.signer, warmup=True))
    finally:
        fleets.stop()
    summary = result.summary()
    first = min(t.submit_start for t in result.tasks if t.submit_start is not None)
    span = stats.makespan_seconds(result)
    span = float("nan") if span is None else span
    joined = None if joins_at is None else joins_at - (result.started_at + first)
    ideal = ideal_seconds(mix, work, joined)
    return {"mix": mix, "ok": summary["ok"], "makespan_s": round(span, 3), "ideal_s": round(ideal, 3),
            "work_s": round(work, 3), "ratio": round(span / ideal, 4), "ran": summary["workers"],
            "stolen_from": summary["stolen"], **bounds(mix, tasks, unit)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--unit-seconds", type=float, default=0.5,
                        help="TASK_UNIT_SECONDS of the runs (simulated seconds per unit of complexity)")
    parser.add_argument("--only", default=",".join(MIXES), help="mixes to run, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help="modes to run, comma-separated")
    parser.add_argument("--keep", type=Path, help="keep the stacks' and fleets' logs in this folder")
    args = parser.parse_args(argv)
    mixes = [m for m in args.only.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in mixes if m not in MIXES] + [m for m in modes if m not in MODES]:
        parser.error(f"unknown mix or mode: {', '.join(unknown)}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="schedule-") as scratch:
        tmp = args.keep or Path(scratch)
        for dispatch in dict.fromkeys(MODES[mode][0] for mode in modes):
            run_dir = Path(tmp) / dispatch
            stack = start_stack(run_dir, workers=0, namespace_prefix="bench",
                                extra_env={"DispatchMode": dispatch, "DISPATCH_MODE": dispatch,
                                           "TaskUnitSeconds": str(args.unit_seconds)})
            try:
                for mode in [m for m in modes if MODES[m][0] == dispatch]:
                    for mix in mixes:
                        row = {"mode": mode, **run_mix(stack, run_dir / mode, mix, MODES[mode][1],
                                                       args.unit_seconds)}
                        print(f"  {mode:<12} {mix:<9} makespan {row['makespan_s']:7.2f} s  ideal "
                              f"{row['ideal_s']:7.2f} s  ratio {row['ratio']:.3f}"
                              f"{'' if row['ok'] else '  (NOT ALL TASKS ENDED)'}", file=sys.stderr)
                        rows.append(row)
            finally:
                stop_stack(stack)
    print(format_table(rows, modes, mixes, args.unit_seconds))
    path = report.REPORTS / time.strftime("schedule-%Y%m%d-%H%M%S.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"unit_seconds": args.unit_seconds, "rows": rows}, indent=1))
    print(f"report: {path.relative_to(ROOT)}")
    return 0 if all(row["ok"] for row in rows) else 1


def format_table(rows: list[dict[str, Any]], modes: list[str], mixes: list[str], unit: float) -> str:
    by = {(row["mode"], row["mix"]): row for row in rows}
    lines = [f"makespan / ideal, {COUNT} tasks per mix, {DEFAULT_WORKERS} workers x {DEFAULT_CONCURRENCY} "
             f"slots, TASK_UNIT_SECONDS={unit:g} (goal: at most 1.05 with stealing)",
             f"{'mix':<10}{'ideal s':>9}" + "".join(f"{mode:>14}" for mode in modes)
             + f"{'FIFO bound':>13}{'longest 1st':>13}"]
    for mix in mixes:
        row = next((row for row in rows if row["mix"] == mix), None)
        cells = [by.get((mode, mix)) for mode in modes]
        limits = [row.get(key) if row else None for key in ("fifo_bound", "longest_first_bound")]
        lines.append(f"{mix:<10}{row['ideal_s'] if row else '-':>9}" + "".join(
            f"{cell['ratio']:>14.3f}" if cell else f"{'-':>14}" for cell in cells)
            + "".join(f"{limit:>13.3f}" if limit is not None else f"{'-':>13}" for limit in limits))
    lines.append("FIFO bound / longest 1st: a perfect dispatcher on the same list, every slot starting the "
                 "next task (or the longest waiting) the moment it is free")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

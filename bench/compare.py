"""`make bench` (issue 11): our system, as `make run` starts it, against Celery 5 and Dramatiq 2 on
this machine, in one run, with one load generator (bench/clients.py: 24 client threads on keep-alive
connections) and TASK_UNIT_SECONDS=0, with the CPU each process kind spent per task (bench/cpu.py).
Prints one table and the issue's goals, met or not; writes bench/reports/bench-<time>.json.

    python bench/compare.py [--quick] [--single 3000] [--batched 6000] [--clients 24]
        [--only cold,ours,celery,dramatiq,urlcpu,cache,scaling,memory]

Items: cold (the first 100 tasks on a freshly started stack), ours, celery, dramatiq (each: 3,000
distinct light tasks one per request, then 6,000 in batches of 100, every result read back one id
per GET /results/{id}?wait=; then both again read 100 ids per GET /results?ids=), urlcpu (localfaas
host + runtime CPU per warm function-URL invocation, bench/localfaas_bench.py's fixture), then
issue 4's cache, scaling and memory (bench/extras.py, a table of their own).

The systems run side by side and take turns, mode by mode (ours, Celery, Dramatiq, then the next
mode), so that load from elsewhere on the machine (it is shared) falls on all three alike; each
run's CPU counts only that system's processes, and the shared RabbitMQ and Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import extras, systems, verdict  # noqa: E402

REPORTS = ROOT / "bench" / "reports"
# "confirms": the peers again with publisher confirms (one id per GET only), for a like-for-like
# comparison; the verdict is against their defaults.
MAIN = ("cold", "ours", "celery", "dramatiq", "confirms", "urlcpu")
ITEMS = (*MAIN, *extras.ITEMS)
PEERS = ("celery", "dramatiq")
NOTE = ("The machine is shared (2 cores, other engineers' runs): tasks/s and latency are noisy, "
        "CPU per task much less so; RabbitMQ and Redis serve every stack on it, so their share includes "
        "others' load. The load generator's CPU is shown apart and counted in no total.")


def comparison(args: argparse.Namespace, only: set[str]) -> list[dict[str, Any]]:
    """The cold stack, then every mode for every system asked for, taking turns."""
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as running:
        runners: list[systems.System] = []
        if only & {"cold", "ours"}:
            print("bench: starting ours", flush=True)
            ours = running.enter_context(systems.ours())
            if "cold" in only:
                rows.append(row := systems.cold_start(ours, args.cold_tasks, args.clients))
                print(f"  cold stack: {row['tasks']} tasks accepted after {row['all_accepted_s']} s, "
                      f"results after {row['all_results_s']} s; environments {row['environments_alive']}",
                      flush=True)
                # The same without make run's provisioned concurrency: every environment on demand.
                with systems.ours(provisioned="0") as on_demand:
                    row = systems.cold_start(on_demand, args.cold_tasks, args.clients)
                rows.append({**row, "mode": "cold stack, on demand"})
                print(f"  cold stack, on demand: {row['tasks']} tasks accepted after "
                      f"{row['all_accepted_s']} s", flush=True)
            if "ours" in only:
                runners.append(ours)
        for name in PEERS:
            if name in only:
                print(f"bench: starting {name}", flush=True)
                runners.append(running.enter_context(systems.peer(name)))
            if name in only and "confirms" in only:
                runners.append(running.enter_context(systems.peer(name, confirm=True)))
        for system in runners:
            systems.warm_up(system, args.clients * systems.WARM_UP_PER_CLIENT)
        for mode, batch, reads in systems.MODES:
            count = args.single if batch == 1 else args.batched
            for system in runners:
                if system.name.endswith(verdict.CONFIRMED) and reads != "one":
                    continue
                rows.append(row := systems.measure(system, mode, batch, reads, count, args.clients,
                                                   args.deadline))
                print(f"  {system.name}, {mode}, {row['reads']}: {row['completed_per_s']} tasks/s, "
                      f"p50 {row['p50_ms']} ms, CPU {row['cpu_ms_per_task']} ms/task"
                      + (f", {row['lost']} LOST" if row["lost"] else ""), flush=True)
    return rows


def url_cpu(requests: int) -> dict[str, Any]:
    """localfaas host + runtime CPU per warm invocation of a function URL whose handler does nothing
    (bench/fixtures/template.yaml's NoopWeb, python3.12), under load (16 clients)."""
    from bench.localfaas_bench import CONCURRENCY, Host
    from bench.localfaas_bench import url_cpu as measure_url_cpu

    run_dir = Path(tempfile.mkdtemp(prefix="bench-urlcpu-"))
    host = Host(run_dir)
    try:
        figures = measure_url_cpu(host, "NoopWeb", CONCURRENCY, requests)
    finally:
        host.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"  localfaas: {figures['total_ms']} ms of host + runtime CPU per warm URL invocation", flush=True)
    return {"system": "localfaas", "mode": "warm URL invocation", "reads": "-", "tasks": figures["requests"],
            **figures, "settings": "NoopWeb (python3.12, default runtime client), http.client threads"}


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, set[str]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 240 + 600 tasks, 1,600 URL calls, memory over 2,000 tasks")
    parser.add_argument("--single", type=int, help="tasks of the one-per-request runs (3000)")
    parser.add_argument("--batched", type=int, help="tasks of the batched runs (6000)")
    parser.add_argument("--clients", type=int, default=24, help="client threads of the load generator")
    parser.add_argument("--cold-tasks", type=int, default=100, help="tasks sent to the cold stack")
    parser.add_argument("--url-requests", type=int, help="warm URL invocations measured (4800)")
    parser.add_argument("--memory-tasks", type=int, help="tasks of the memory run (20000)")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds a run may take")
    parser.add_argument("--only", default=",".join(ITEMS),
                        help=f"comma-separated subset of {','.join(ITEMS)}")
    args = parser.parse_args(argv)
    quick = args.quick
    args.single = args.single or (240 if quick else 3000)
    args.batched = args.batched or (600 if quick else 6000)
    args.url_requests = args.url_requests or (1600 if quick else 4800)
    args.memory_tasks = args.memory_tasks or (2000 if quick else 20000)
    only = set(args.only.split(","))
    if unknown := only - set(ITEMS):
        parser.error(f"unknown items: {', '.join(sorted(unknown))}")
    if min(args.single, args.batched, args.clients, args.cold_tasks) < 1:
        parser.error("counts must be at least 1")
    return args, only


def main(argv: list[str] | None = None) -> int:
    args, only = parse(argv)
    started, load_before = time.time(), os.getloadavg()
    rows = comparison(args, only)
    if "urlcpu" in only:
        print("bench: urlcpu", flush=True)
        rows.append(url_cpu(args.url_requests))
    other = extras.run(only, args.memory_tasks)
    runs = [row for row in rows
            if row["mode"] not in ("cold stack", "cold stack, on demand", "warm URL invocation")]
    print()
    print(f"Benchmark on {os.cpu_count()} cores ({'quick' if args.quick else 'full'}): {args.single:,} tasks "
          f"one per request, {args.batched:,} in batches of 100, {args.clients} client threads, "
          f"TASK_UNIT_SECONDS=0; load average {load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} "
          "at the end.")
    print(NOTE)
    if runs:
        print(verdict.table(runs))
        print("\n".join(verdict.details(runs)))
    for row in rows:
        if row["mode"].startswith("cold stack"):
            print(f"{row['mode']}: {row['accepted']} of {row['tasks']} tasks accepted after "
                  f"{row['all_accepted_s']} s "
                  f"({row['accepted_in_first_second']} in the first second), results after "
                  f"{row['all_results_s']} s; warm from the stack's start: environments "
                  f"{row['environments_before']} after invocations {row['invocations_before']}; "
                  f"environments at the end: {row['environments_alive']}")
    print()
    print(verdict.goals_table(rows))
    if other:
        print()
        print(extras.table(other))
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"
    path.write_text(json.dumps({
        "started_at": started, "argv": sys.argv[1:] if argv is None else argv, "cpu_count": os.cpu_count(),
        "settings": {"single": args.single, "batched": args.batched, "clients": args.clients,
                     "cold_tasks": args.cold_tasks, "modes": systems.MODES, "peers": systems.PEER_SLOTS},
        "rows": rows, "goals": verdict.goals(rows), "other": other,
        "loadavg_start": load_before, "loadavg_end": os.getloadavg(), "note": NOTE}, indent=2, default=str))
    print(f"report: {path.relative_to(ROOT)}")
    return 1 if any(row.get("lost") for row in [*rows, *other]) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The systems of `make bench`'s comparison (issue 11), started and measured alike: ours as `make run`
starts it, Celery and Dramatiq behind their gunicorn fronts (bench/peers); each run of the load
generator (bench/clients.py) metered for CPU per process kind (bench/cpu.py).

Ours differs from `make run` only where a stack of its own needs it (taskfaas/stack.py): its own
namespace, key pair and free ports, TASK_UNIT_SECONDS=0 (the benchmark's setting), and the janitor's
schedule, which start_stack shortens with --minute-seconds 1: rate(60 minutes) under that scale is
make run's rate(1 minute). The fleet is worker_fleet's own default size (4 workers x 2) with its
default PREFETCH_MULTIPLIER (not set).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from bench import clients, cpu, verdict
from taskfaas.stack import ROOT, start_stack, stop_stack
from worker_fleet.fleet import DEFAULT_CONCURRENCY, DEFAULT_WORKERS

# One concurrency slot per core for each peer, as each one's documentation recommends on 2 cores
# (bench/peers/README.md): Celery's prefork, one process per core; Dramatiq, one process per core
# with its default 8 threads.
PEER_SLOTS = {"celery": {"workers": 2, "threads": 1}, "dramatiq": {"workers": 2, "threads": 8}}
# (mode, tasks per request, reads): the two runs with its reads, then the same with ?ids=.
MODES = (("1 per request", 1, "one"), ("batches of 100", 100, "one"),
         ("1 per request", 1, "ids"), ("batches of 100", 100, "ids"))
READS_LABEL = {"one": "one id per GET", "ids": "100 ids per GET"}
WARM_UP_PER_CLIENT = 10  # tasks per client, one per request, before the first measured run


@dataclass
class System:
    name: str
    target: clients.Target
    roots: dict[str, list[int]]  # process kind -> root pids of the system's own processes
    settings: str
    # Ours: invocations per function so far (localfaas's status), to give CPU per invocation.
    invocations: Callable[[], dict[str, int]] | None = None
    about: dict[str, Any] = field(default_factory=dict)

    def meter(self) -> cpu.Meter:
        """The system's processes, the shared services, and this process alone (the load generator,
        measured apart: its children are the systems, this one's and the others')."""
        return cpu.Meter({**self.roots, **cpu.service_roots(), "load generator": [os.getpid()]},
                         alone=["load generator"])


def light_tasks(count: int) -> list[dict[str, Any]]:
    """Distinct `hash` tasks of one SHA-256 round of a short string: their own work is negligible, so
    a run measures the machinery. Fresh every call (a marker), so nothing is answered from the
    cache or coalesced; complexity 1 (with TASK_UNIT_SECONDS=0 it adds no wait)."""
    marker = uuid.uuid4().hex[:12]
    return [{"type": "hash", "payload": {"data": f"{marker}-{i}", "rounds": 1}, "complexity": 1}
            for i in range(count)]


@contextmanager
def ours(provisioned: str | None = None) -> Iterator[System]:
    """`provisioned`: the producer's and supervisor's provisioned concurrency, make run's
    (infra/local.env) unless given ("0": every environment on demand)."""
    if provisioned is None:
        provisioned = dotenv_values(ROOT / "infra" / "local.env").get("PROVISIONED_CONCURRENCY") or "0"
    # localfaas reads --parameter-overrides as shell-like words: a value with a space is quoted.
    env = {"TASK_UNIT_SECONDS": "0", "TaskUnitSeconds": "0", "JanitorSchedule": "'rate(60 minutes)'",
           "ProvisionedConcurrency": provisioned}
    stack = start_stack(Path(tempfile.mkdtemp(prefix="bench-")), workers=DEFAULT_WORKERS,
                        concurrency=DEFAULT_CONCURRENCY, extra_env=env, namespace_prefix="bench")
    try:
        def invocations() -> dict[str, int]:
            functions = stack.host.status()["functions"]
            return {name: function["invocations"] for name, function in functions.items()}

        assert stack.fleet is not None
        yield System("ours", clients.Target(stack.producer, stack.supervisor, stack.signer),
                     {"localfaas host": [stack.host.process.pid], "workers": [stack.fleet.pid]},
                     f"make run's defaults: {DEFAULT_WORKERS} workers x {DEFAULT_CONCURRENCY}, "
                     f"provisioned concurrency {provisioned}, "
                     "PREFETCH_MULTIPLIER default, template.yaml as is (python3.12; localfaas's "
                     "default runtime client, lean)",
                     invocations, {"namespace": stack.namespace})
    finally:
        stop_stack(stack)


@contextmanager
def peer(name: str, confirm: bool = False) -> Iterator[System]:
    """`confirm`: the peer publishes with broker confirms, as ours does (its name gets CONFIRMED)."""
    from bench.peers.run import start_peer  # the peers' libraries only when a peer is asked for

    with start_peer(name, unit_seconds=0.0, confirm=confirm, **PEER_SLOTS[name]) as handle:
        about = handle.describe()
        worker, front = handle.processes  # in the order start_peer spawns them
        slots = PEER_SLOTS[name]
        yield System(name + (verdict.CONFIRMED if confirm else ""), clients.Target(handle.url, handle.url),
                     {"gunicorn front": [front.pid], f"{name} workers": [worker.pid]},
                     f"{name} {about['version']}, {slots['workers']} x {slots['threads']} slots, "
                     f"gunicorn {about['gunicorn']} gthread 2x16 (bench/peers/README.md)", about=about)


def warm_up(system: System, count: int) -> None:
    """Tasks through the whole path, not measured: every execution environment, worker and
    connection the runs use is started before the first one (a cold stack is measured apart)."""
    report = clients.run_load(light_tasks(count), system.target, clients=max(1, count // WARM_UP_PER_CLIENT))
    if not report.ok:
        raise RuntimeError(f"{system.name}: the warm-up lost tasks: {report.summary()['problems'][:3]}")


def measure(system: System, mode: str, batch: int, reads: str, count: int, client_count: int,
            deadline: float) -> dict[str, Any]:
    """One run of `count` fresh tasks: throughput, latency, and CPU per task per process kind."""
    tasks = light_tasks(count)
    before = system.invocations() if system.invocations else {}
    with system.meter() as meter:
        report = clients.run_load(tasks, system.target, clients=client_count, batch=batch, reads=reads,
                                  deadline=deadline)
    summary = report.summary()
    latency = summary["latency_ms"]["submit_to_result"]
    split = cpu.per_operation(meter.used, count)
    row: dict[str, Any] = {
        "system": system.name, "mode": mode, "reads": READS_LABEL[reads], "tasks": count,
        "clients": client_count, "completed": summary["completed"], "lost": summary["not_ended"],
        "failed": summary["status"]["failed"], "completed_per_s": summary["throughput"]["completed_per_s"],
        "p50_ms": latency["p50"], "p99_ms": latency["p99"], "cpu_ms_per_task": split["total_ms"],
        "cpu_split_ms": split["per_kind_ms"], "cpu_seconds": meter.used, "wall_s": meter.seconds,
        "processes_alive": meter.alive, "environments_alive": meter.functions,
        "requests": summary["requests"], "settings": system.settings}
    if system.invocations:
        after = system.invocations()
        made = {name: count - before.get(name, 0) for name, count in after.items()
                if count > before.get(name, 0)}
        row["invocations"] = made
        row["cpu_ms_per_invocation"] = per_invocation(meter.used, made)
    return row


def per_invocation(used: dict[str, float], invocations: dict[str, int]) -> dict[str, float]:
    """ms of CPU per invocation: each function's environments per its own invocations, and the
    localfaas host per invocation of any function (it serves them all)."""
    figures = {}
    for name, count in invocations.items():
        seconds = used.get(cpu.FUNCTION_PREFIX + name, 0.0)
        figures[name] = round(seconds * 1000 / count, 3)
    total = sum(invocations.values())
    if total:
        host = used.get("localfaas host", 0.0) + used.get("localfaas host (ended children)", 0.0)
        figures["localfaas host"] = round(host * 1000 / total, 3)
    return figures


def cold_start(system: System, count: int, client_count: int) -> dict[str, Any]:
    """On a freshly started stack (functions cold but for what its start touched): `count` tasks
    one per request from `client_count` clients, as the load runs send them; how long until all
    were accepted (202), and until all results were read."""
    before = system.invocations() if system.invocations else {}
    with system.meter() as meter:
        report = clients.run_load(light_tasks(count), system.target, clients=client_count)
    tasks = report.tasks
    accepted = sorted(t.submit_end for t in tasks if t.submit_end is not None)
    results = [t.result_at for t in tasks if t.result_at is not None]
    return {"system": system.name, "mode": "cold stack", "tasks": count, "clients": client_count,
            "accepted": len(accepted), "lost": report.summary()["not_ended"],
            "all_accepted_s": round(accepted[-1], 3) if len(accepted) == count else None,
            "first_accepted_s": round(accepted[0], 3) if accepted else None,
            "accepted_in_first_second": sum(1 for t in accepted if t <= 1.0),
            "all_results_s": round(max(results), 3) if len(results) == count else None,
            "environments_before": meter.functions_before, "environments_alive": meter.functions,
            "invocations_before": before,
            "cpu_seconds": meter.used, "settings": system.settings, "at": time.time()}

"""What `make bench` prints for issue 11: one table of the runs (system, mode, reads, tasks/s, p50/p99,
ratio to the best peer, CPU per task and its split per process kind), the CPU per invocation of our
functions, and the issue's goals, each met or not, with the figure that decides it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# Process kinds as the table names them, in the order it lists them; function environments are
# "function <Name>" (bench/cpu.py). Kinds not named here keep their own name and come last.
LABELS = {"function Producer": "producer", "function Supervisor": "supervisor",
          "function ResultHandler": "result handler", "function Janitor": "janitor",
          "localfaas host": "localfaas host", "workers": "workers", "gunicorn front": "front",
          "celery workers": "celery", "dramatiq workers": "dramatiq", "rabbitmq": "rabbitmq",
          "redis": "redis"}
APART = "load generator"
ONE, IDS = "one id per GET", "100 ids per GET"


def split_cell(split: dict[str, float]) -> str:
    """'producer 2.10, supervisor 3.05, ...' in ms per task; the load generator apart, in brackets."""
    order = {kind: n for n, kind in enumerate(LABELS)}
    kinds = sorted((k for k in split if not k.startswith(APART)),
                   key=lambda kind: (order.get(kind, len(order)), kind))
    parts = [f"{LABELS.get(kind, kind)} {split[kind]:.2f}" for kind in kinds if split[kind] >= 0.005]
    generator = sum(ms for kind, ms in split.items() if kind.startswith(APART))
    return ", ".join(parts) + f" [load generator {generator:.2f}]"


# The name suffix of a peer run with publisher confirms (as ours publishes): a like-for-like row,
# never the best peer, which the issue defines as a peer at its defaults.
CONFIRMED = "+confirms"


def best_peer(rows: Sequence[dict[str, Any]], mode: str, reads: str) -> dict[str, Any] | None:
    peers = [row for row in rows if row["system"] != "ours" and not row["system"].endswith(CONFIRMED)
             and row.get("mode") == mode
             and row.get("reads") == reads and row.get("completed_per_s")]
    return max(peers, key=lambda row: row["completed_per_s"], default=None)


def ratio(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> float | None:
    best = best_peer(rows, row["mode"], row["reads"])
    if best is None or not row.get("completed_per_s"):
        return None
    return round(row["completed_per_s"] / best["completed_per_s"], 2)


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| system | mode | reads | tasks | tasks/s | p50 ms | p99 ms | x best peer | CPU ms/task "
             "| CPU split, ms/task |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['system']} | {row['mode']} | {row['reads']} | {row['tasks']:,} "
                     f"| {_number(row.get('completed_per_s'), 0)} | {_number(row.get('p50_ms'), 0)} "
                     f"| {_number(row.get('p99_ms'), 0)} | {_number(ratio(row, rows), 2)} "
                     f"| {_number(row.get('cpu_ms_per_task'), 2)} "
                     f"| {split_cell(row.get('cpu_split_ms', {}))} |")
    return "\n".join(lines)


def details(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A line per run of ours: CPU per invocation and environments alive; a line per run that lost
    tasks."""
    lines = []
    for row in rows:
        name = f"{row['system']}, {row['mode']}, {row['reads']}"
        if row["system"] == "ours" and row.get("cpu_ms_per_invocation"):
            each = ", ".join(f"{LABELS.get('function ' + k, k)} {v:.2f}"
                             for k, v in row["cpu_ms_per_invocation"].items())
            alive = ", ".join(f"{k} {v}" for k, v in row.get("environments_alive", {}).items())
            made = ", ".join(f"{k} {v:,}" for k, v in row.get("invocations", {}).items())
            lines.append(f"{name}: ms of CPU per invocation: {each}; invocations: {made}; "
                         f"environments alive: {alive}")
        if row.get("lost"):
            lines.append(f"{name}: {row['lost']} tasks LOST (not ended by the deadline)")
    return lines


def _find(rows: Sequence[dict[str, Any]], system: str, mode: str, reads: str | None = None,
          ) -> dict[str, Any] | None:
    return next((row for row in rows if row["system"] == system and row.get("mode") == mode
                 and (reads is None or row.get("reads") == reads)), None)


def goals(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(goal, figure, verdict) for each of the issue's goals: "met", "NOT MET", or "not measured"
    when the run did not include what decides it."""
    def throughput(mode: str) -> Callable[[], tuple[float, str] | None]:
        def figure() -> tuple[float, str] | None:
            ours = _find(rows, "ours", mode, ONE)
            value = ratio(ours, rows) if ours else None
            best = best_peer(rows, mode, ONE)
            if ours is None or value is None or best is None:
                return None
            return value, (f"{value:.2f}x ({ours['completed_per_s']:,.0f} vs {best['system']} "
                           f"{best['completed_per_s']:,.0f} tasks/s)")
        return figure

    def cpu_per_task(mode: str) -> Callable[[], tuple[float, str] | None]:
        def figure() -> tuple[float, str] | None:
            ours = _find(rows, "ours", mode, ONE)
            value = ours.get("cpu_ms_per_task") if ours else None
            return None if value is None else (value, f"{value:.2f} ms")
        return figure

    def url_cpu() -> tuple[float, str] | None:
        row = _find(rows, "localfaas", "warm URL invocation")
        if row is None:
            return None
        return row["total_ms"], (f"{row['total_ms']:.3f} ms (host {row['host_ms']:.3f}, "
                                 f"runtime {row['runtime_ms']:.3f}; {row['clients']} clients)")

    def cold() -> tuple[float, str] | None:
        row = _find(rows, "ours", "cold stack")
        if row is None:
            return None
        value = row["all_accepted_s"]
        if value is None:
            return float("inf"), f"not all {row['tasks']} accepted"
        return value, f"{value:.2f} s ({row['accepted_in_first_second']} in the first second)"

    checks: list[tuple[str, Callable[[], tuple[float, str] | None], Callable[[float], bool]]] = [
        ("one task per request: >= 1.0x the best peer", throughput("1 per request"),
         lambda v: v >= 1.0),
        ("batches of 100: >= 1.1x the best peer", throughput("batches of 100"), lambda v: v >= 1.1),
        ("CPU per task, one per request: <= 5 ms", cpu_per_task("1 per request"), lambda v: v <= 5.0),
        ("CPU per task, batches of 100: <= 2.5 ms", cpu_per_task("batches of 100"), lambda v: v <= 2.5),
        ("localfaas host + runtime CPU per warm URL invocation: <= 0.5 ms", url_cpu, lambda v: v <= 0.5),
        ("first 100 tasks on a cold stack accepted within 2 s", cold, lambda v: v <= 2.0),
    ]
    verdicts = []
    for goal, figure, test in checks:
        found = figure()
        if found is None:
            verdicts.append((goal, "-", "not measured"))
        else:
            verdicts.append((goal, found[1], "met" if test(found[0]) else "NOT MET"))
    return verdicts


def goals_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| goal (issue 11; reads one id per GET) | measured | verdict |", "|---|---|---|"]
    lines += [f"| {goal} | {figure} | {verdict} |" for goal, figure, verdict in goals(rows)]
    return "\n".join(lines)


def _number(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"

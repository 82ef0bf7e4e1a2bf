"""bench/verdict.py: the issue's table (ratio to the best peer of the same mode and reads, the CPU
split) and its goals, on synthetic rows."""

from __future__ import annotations

from typing import Any

from bench import verdict

ONE, IDS = verdict.ONE, verdict.IDS


def run(system: str, mode: str, reads: str, per_s: float, cpu_ms: float, **extra: Any) -> dict[str, Any]:
    return {"system": system, "mode": mode, "reads": reads, "tasks": 3000, "completed_per_s": per_s,
            "p50_ms": 40.0, "p99_ms": 90.0, "cpu_ms_per_task": cpu_ms, "lost": 0, **extra}


ROWS = [
    run("ours", "1 per request", ONE, 400.0, 4.5, cpu_split_ms={
        "function Supervisor": 1.5, "workers": 1.0, "function Producer": 1.0, "localfaas host": 0.5,
        "redis": 0.5, "function Janitor": 0.001, "load generator": 0.8,
        "load generator (ended children)": 0.1},
        cpu_ms_per_invocation={"Producer": 1.0, "Supervisor": 0.75, "localfaas host": 0.2},
        invocations={"Producer": 3000, "Supervisor": 6000}, environments_alive={"Producer": 24}),
    run("celery", "1 per request", ONE, 300.0, 5.0),
    run("dramatiq", "1 per request", ONE, 380.0, 2.0),
    run("ours", "batches of 100", ONE, 500.0, 3.0),
    run("celery", "batches of 100", ONE, 600.0, 2.5),
    run("dramatiq", "batches of 100", ONE, 550.0, 1.2),
    run("ours", "1 per request", IDS, 900.0, 3.0),  # ?ids= is compared with the peers' ?ids= only
    run("dramatiq", "1 per request", IDS, 450.0, 1.0),
]


def test_each_row_against_the_best_peer_of_its_mode_and_reads() -> None:
    assert verdict.ratio(ROWS[0], ROWS) == round(400 / 380, 2)
    assert verdict.ratio(ROWS[1], ROWS) == round(300 / 380, 2)
    assert verdict.ratio(ROWS[2], ROWS) == 1.0
    assert verdict.ratio(ROWS[3], ROWS) == round(500 / 600, 2)
    assert verdict.ratio(ROWS[6], ROWS) == 2.0
    assert verdict.ratio(run("ours", "batches of 100", IDS, 1.0, 1.0), ROWS) is None  # no peer ran it


def test_a_peer_with_confirms_is_never_the_best_peer() -> None:
    faster = run("dramatiq" + verdict.CONFIRMED, "1 per request", ONE, 10_000.0, 1.0)
    assert verdict.best_peer([*ROWS, faster], "1 per request", ONE) is not faster
    assert verdict.ratio(ROWS[0], [*ROWS, faster]) == round(400 / 380, 2)


def test_the_table_and_its_split() -> None:
    lines = verdict.table(ROWS).splitlines()
    assert lines[0].startswith("| system | mode | reads | tasks | tasks/s | p50 ms | p99 ms | x best peer |")
    assert lines[2] == (
        "| ours | 1 per request | one id per GET | 3,000 | 400 | 40 | 90 | 1.05 | 4.50 | producer 1.00, "
        "supervisor 1.50, localfaas host 0.50, workers 1.00, redis 0.50 [load generator 0.90] |")
    assert lines[3].startswith(
        "| celery | 1 per request | one id per GET | 3,000 | 300 | 40 | 90 | 0.79 | 5.00 |")


def test_details_give_cpu_per_invocation_and_losses() -> None:
    lost = run("celery", "batches of 100", IDS, 10.0, 1.0, lost=7)
    lines = verdict.details([ROWS[0], lost])
    assert lines[0] == ("ours, 1 per request, one id per GET: ms of CPU per invocation: producer 1.00, "
                        "supervisor 0.75, localfaas host 0.20; invocations: Producer 3,000, Supervisor "
                        "6,000; environments alive: Producer 24")
    assert lines[1] == "celery, batches of 100, 100 ids per GET: 7 tasks LOST (not ended by the deadline)"


def test_goals_met_not_met_and_not_measured() -> None:
    rows = [*ROWS, {"system": "localfaas", "mode": "warm URL invocation", "reads": "-", "total_ms": 0.45,
                    "host_ms": 0.2, "runtime_ms": 0.25, "clients": 16},
            {"system": "ours", "mode": "cold stack", "reads": "-", "tasks": 100, "all_accepted_s": 2.5,
             "accepted_in_first_second": 30}]
    found = {goal: (figure, verdict_) for goal, figure, verdict_ in verdict.goals(rows)}
    assert found["one task per request: >= 1.0x the best peer"] == (
        "1.05x (400 vs dramatiq 380 tasks/s)", "met")
    assert found["batches of 100: >= 1.1x the best peer"] == ("0.83x (500 vs celery 600 tasks/s)", "NOT MET")
    assert found["CPU per task, one per request: <= 5 ms"] == ("4.50 ms", "met")
    assert found["CPU per task, batches of 100: <= 2.5 ms"] == ("3.00 ms", "NOT MET")
    assert found["localfaas host + runtime CPU per warm URL invocation: <= 0.5 ms"][1] == "met"
    assert found["first 100 tasks on a cold stack accepted within 2 s"] == (
        "2.50 s (30 in the first second)", "NOT MET")
    assert {verdict_ for _, _, verdict_ in verdict.goals(ROWS[1:3])} == {"not measured"}
    table = verdict.goals_table(rows).splitlines()
    assert table[2] == ("| one task per request: >= 1.0x the best peer "
                        "| 1.05x (400 vs dramatiq 380 tasks/s) | met |")

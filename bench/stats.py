"""What a load test measured and the figures drawn from it: the records of a run (one per task, one
per submission request, and the LoadReport holding them), percentiles (numpy's, the one definition
the benchmarks use), and `summarize`, the figures of a run as a dict (throughput, latency, statuses,
cache outcomes, work from before the run, timeline). The table is bench/report.py's."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench import makespan

# Outcomes of a task at the end of a run. The first two are "ended"; the others make the run fail.
ENDED = ("succeeded", "failed")
NOT_ENDED = ("rejected", "lost", "timeout", "unsubmitted")
CACHE_OUTCOMES = ("hit", "coalesced", "miss", "bypass", "existing")
EXPECTED_FAILURE_TYPE = "fail"


# Percentiles --------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q% of the values at or below it.
    None for no values; q=0 is the minimum, q=100 the maximum. (numpy's "inverted_cdf" method is
    this definition: an observed value, never an interpolation between two.)"""
    if not len(values):
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be from 0 to 100")
    return float(np.percentile(values, q, method="inverted_cdf"))


def latency_stats(values: Sequence[float]) -> dict[str, Any]:
    """count, mean, p50, p90, p99, max (same unit as the values; None when there are none)."""
    count = len(values)
    if not count:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    array = np.asarray(values, dtype=float)
    p50, p90, p99 = (float(v) for v in np.percentile(array, [50, 90, 99], method="inverted_cdf"))
    return {"count": count, "mean": float(array.sum()) / count, "p50": p50, "p90": p90, "p99": p99,
            "max": float(array.max())}


# Run records --------------------------------------------------------------------------------------

@dataclass(slots=True)
class TaskOutcome:
    """One task of the run. Times are seconds since the run started (client clock); server_ms is
    finished_at - submitted_at from the final record (the server's own view), when it has both."""

    index: int
    type: str
    complexity: int
    outcome: str = "pending"  # succeeded | failed | rejected | lost | timeout | unsubmitted
    task_id: str | None = None
    request: int | None = None  # index of the submission request that carried it
    submit_start: float | None = None
    submit_end: float | None = None
    cache: str | None = None  # hit | coalesced | miss | bypass | existing | None (not reported)
    submit_status: str | None = None
    result_at: float | None = None
    worker_id: str | None = None
    server_ms: float | None = None
    server_submitted_at: float | None = None  # epoch ms, from the final record
    server_finished_at: float | None = None
    polls: int = 0
    error: str | None = None
    result_url: str | None = None
    # Index of the run's first task with the same task_id, or else the same work (type and
    # payload): the tasks that one computation of this run could answer.
    same_as: int | None = None
    stolen_from: str | None = None  # the round-robin's pick, when another worker took it (stealing)

    @property
    def latency(self) -> float | None:
        """Submit-to-result, seconds: from the first submission attempt to the final record in hand."""
        if self.result_at is None or self.submit_start is None:
            return None
        return self.result_at - self.submit_start


@dataclass(slots=True)
class RequestSample:
    """One submission request (with its retries): start and latency in seconds."""

    index: int
    size: int
    start: float
    latency: float | None = None
    http_status: int | None = None
    attempts: int = 0


@dataclass
class LoadReport:
    config: dict[str, Any]
    started_at: float  # epoch seconds
    elapsed: float
    tasks: list[TaskOutcome]
    requests: list[RequestSample]
    counters: dict[str, int] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)  # optional extras (stats, workers)

    def summary(self) -> dict[str, Any]:
        return summarize(self)

    @property
    def ok(self) -> bool:
        """Every task ended (succeeded or failed) by the deadline."""
        return all(task.outcome in ENDED for task in self.tasks)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "started_at": self.started_at,
            "elapsed_s": self.elapsed,
            "summary": self.summary(),
            "counters": self.counters,
            "server": self.server,
            "requests": [asdict(r) for r in self.requests],
            "tasks": [asdict(t) for t in self.tasks],
        }


# Summary ------------------------------------------------------------------------------------------

def _ms(values: Sequence[float]) -> dict[str, Any]:
    stats = latency_stats([v * 1000 for v in values])
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()}


def makespan_seconds(report: LoadReport) -> float | None:
    """From the first submission to the last task's end on the server (its finished_at; the result
    in hand when the server reports none), for the tasks that ended; None when none did."""
    final = [t for t in report.tasks if t.outcome in ENDED and t.result_at is not None]
    starts = [t.submit_start for t in report.tasks if t.submit_start is not None]
    if not final or not starts:
        return None
    ends = [t.server_finished_at / 1000 - report.started_at if t.server_finished_at is not None
            else t.result_at for t in final]
    return max(e for e in ends if e is not None) - min(starts)


def _makespan(report: LoadReport, final: Sequence[TaskOutcome]) -> dict[str, Any] | None:
    """makespan_seconds against the ideal (bench/makespan.py). None without TASK_UNIT_SECONDS in the
    config or slots in the server's /workers."""
    unit = report.config.get("task_unit_seconds")
    slots = makespan.slots_of(report.server.get("workers"))
    span = makespan_seconds(report)
    if unit is None or not slots or span is None:
        return None
    computed = [t.complexity for t in final if t.cache in makespan.COMPUTED]
    return makespan.measure(span, computed, float(unit), slots).to_json()


def worker_label(task: TaskOutcome) -> str:
    if task.worker_id:
        return task.worker_id
    if task.cache == "hit":
        return "(cache hit: no worker)"
    return "(none reported)"


def timeline(tasks: Sequence[TaskOutcome], bucket: float = 1.0,
             started_at: float | None = None) -> dict[str, Any]:
    """Per `bucket` seconds since the start: tasks submitted (accepted), completed (result in the
    client's hand) and, given the run's epoch start and records with finished_at, finished on the
    server (the worker's end of the task; empty otherwise)."""
    ends = [t.result_at for t in tasks if t.result_at is not None]
    sent = [t.submit_end for t in tasks if t.submit_end is not None]
    done = ([max(0.0, t.server_finished_at / 1000 - started_at) for t in tasks
             if t.server_finished_at is not None] if started_at is not None else [])
    last = max([*ends, *sent, *done], default=0.0)
    slots = int(last // bucket) + 1 if (ends or sent or done) else 0
    series: dict[str, list[int]] = {}
    for name, values in (("submitted", sent), ("completed", ends), ("finished_on_server", done)):
        counts = [0] * slots
        for value in values:
            counts[int(value // bucket)] += 1
        series[name] = counts if values else []
    return {"bucket_s": bucket, **series}


# Cache outcomes of a task that did no work of its own.
NO_WORK = ("hit", "coalesced", "existing")


def done_before(accepted: Sequence[TaskOutcome]) -> dict[str, int]:
    """How many accepted tasks were answered by work from before the run (by cache outcome, and
    "total"): those of a same_as group in which no task was computed (a miss, a bypass, or an
    outcome the system does not report). Within a group the order of admission does not matter:
    one computation in the run accounts for its repeats."""
    def group(task: TaskOutcome) -> int:
        return task.index if task.same_as is None else task.same_as

    computed = {group(t) for t in accepted if t.cache not in NO_WORK}
    before = Counter(t.cache for t in accepted if group(t) not in computed)
    return {"total": sum(before.values()), **{name: before.get(name, 0) for name in NO_WORK}}


def summarize(report: LoadReport) -> dict[str, Any]:
    tasks = report.tasks
    outcomes = Counter(t.outcome for t in tasks)
    accepted = [t for t in tasks if t.submit_end is not None]
    final = [t for t in tasks if t.outcome in ENDED and t.result_at is not None]
    starts = [t.submit_start for t in tasks if t.submit_start is not None]
    first = min(starts, default=0.0)
    submit_window = max((t.submit_end for t in accepted), default=first) - first  # type: ignore[type-var]
    complete_window = max((t.result_at for t in final), default=first) - first  # type: ignore[type-var]
    failed = [t for t in tasks if t.outcome == "failed"]
    expected = sum(1 for t in failed if t.type == EXPECTED_FAILURE_TYPE)
    cache = Counter(t.cache or "(not reported)" for t in accepted)
    by_cache = {name: _ms([t.latency for t in final if t.cache == name])  # type: ignore[misc]
                for name in [*CACHE_OUTCOMES, *sorted(set(cache) - set(CACHE_OUTCOMES))] if cache.get(name)}
    problems = [{"index": t.index, "task_id": t.task_id, "type": t.type, "outcome": t.outcome,
                 "error": t.error}
                for t in tasks if t.outcome in NOT_ENDED
                or (t.outcome == "failed" and t.type != EXPECTED_FAILURE_TYPE)][:20]
    request_latencies = [r.latency for r in report.requests if r.latency is not None]
    # The server's own view: from the first admission to the last task finishing (its clock), which
    # does not include the time the client took to collect the results.
    served = [t for t in final if t.server_submitted_at is not None and t.server_finished_at is not None]
    server_window = ((max(t.server_finished_at for t in served) - min(t.server_submitted_at for t in served))
                     / 1000 if served else 0.0)  # type: ignore[type-var, operator]
    return {
        "tasks": len(tasks),
        "elapsed_s": round(report.elapsed, 3),
        "submitted": len(accepted),
        "completed": len(final),
        "throughput": {
            "submitted_per_s": round(len(accepted) / submit_window, 2) if submit_window > 0 else None,
            "completed_per_s": round(len(final) / complete_window, 2) if complete_window > 0 else None,
            "submit_window_s": round(submit_window, 3),
            "complete_window_s": round(complete_window, 3),
            "server_completed_per_s": round(len(served) / server_window, 2) if server_window > 0 else None,
            "server_window_s": round(server_window, 3) if served else None,
            "server_completed": len(served),
        },
        "latency_ms": {
            "submission": _ms(request_latencies),
            "submit_to_result": _ms([t.latency for t in final]),  # type: ignore[misc]
            "server_submit_to_finish": _ms([t.server_ms / 1000 for t in final if t.server_ms is not None]),
            # From the record's finished_at (the worker's end of the task) to the client holding the
            # result, on the same host's clock: the system's result path (results queue, result
            # handler, store, wake-up, HTTP) plus any wait for a poll slot on the client's side.
            "finish_to_pickup": _ms([max(0.0, report.started_at + t.result_at - t.server_finished_at / 1000)
                               for t in served]),  # type: ignore[operator]
        },
        "submit_to_result_by_cache_ms": by_cache,
        "status": {name: outcomes.get(name, 0) for name in (*ENDED, *NOT_ENDED)},
        "failed": {"total": len(failed), "expected_type_fail": expected,
                   "unexpected": len(failed) - expected},
        "cache": {**{name: cache.get(name, 0) for name in CACHE_OUTCOMES},
                  **{k: v for k, v in cache.items() if k not in CACHE_OUTCOMES}},
        "done_before": done_before(accepted),
        "workers": dict(sorted(Counter(worker_label(t) for t in final).items())),
        "stolen": dict(sorted(Counter(t.stolen_from for t in final if t.stolen_from).items())),
        "makespan": _makespan(report, final),
        "not_ended": sum(outcomes.get(name, 0) for name in NOT_ENDED),
        "problems": problems,
        "requests": {"submissions": len(report.requests),
                     "submit_retries": report.counters.get("submit_retries", 0),
                     "polls": report.counters.get("polls", 0),
                     "poll_errors": report.counters.get("poll_errors", 0),
                     "poll_not_found": report.counters.get("poll_not_found", 0),
                     "quick_same_work": report.counters.get("quick_same_work", 0),
                     "max_schedule_lag_ms": report.counters.get("max_schedule_lag_ms", 0),
                     "errors": {k[len("error "):]: v for k, v in report.counters.items()
                                if k.startswith("error ")}},
        "timeline": timeline(tasks, started_at=report.started_at),
        "ok": all(t.outcome in ENDED for t in tasks),
    }

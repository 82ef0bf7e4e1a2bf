"""The figures of a run (bench/stats.py: percentiles, the summary, work from before the run) and its
report (bench/report.py: the table, its warning, the JSON and the chart), on synthetic runs."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import report, stats
from bench.stats import LoadReport, RequestSample, TaskOutcome

# Percentiles --------------------------------------------------------------------------------------

def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert stats.percentile(values, 50) == 50
    assert stats.percentile(values, 90) == 90
    assert stats.percentile(values, 99) == 99
    assert stats.percentile(values, 100) == 100
    assert stats.percentile(values, 0) == 1
    assert stats.percentile([3.0, 1.0, 2.0], 50) == 2.0  # order does not matter
    assert stats.percentile([7.0], 99) == 7.0
    assert stats.percentile([1, 2, 3, 4], 50) == 2
    assert stats.percentile([1, 2, 3, 4], 51) == 3
    assert stats.percentile([], 50) is None
    with pytest.raises(ValueError):
        stats.percentile([1], 101)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60),
       st.one_of(st.integers(0, 100), st.floats(0, 100)))
def test_percentile_is_the_nearest_rank_the_benchmarks_always_used(values: list[float], q: float) -> None:
    # The hand-written definition bench/loadgen.py had, float arithmetic included: numpy's
    # inverted_cdf method gives the same value, so figures compare with earlier reports.
    nearest_rank = sorted(values)[max(1, math.ceil(q / 100 * len(values))) - 1]
    assert stats.percentile(values, q) == nearest_rank
    figures = stats.latency_stats(values)
    assert [figures["p50"], figures["p90"], figures["p99"]] == [
        sorted(values)[max(1, math.ceil(rank / 100 * len(values))) - 1] for rank in (50, 90, 99)]
    assert figures["max"] == max(values) and figures["count"] == len(values)


def test_latency_stats() -> None:
    figures = stats.latency_stats([float(v) for v in range(1000, 0, -1)])
    assert figures == {"count": 1000, "mean": 500.5, "p50": 500.0, "p90": 900.0, "p99": 990.0, "max": 1000.0}
    assert stats.latency_stats([])["p50"] is None


# Summary and report -------------------------------------------------------------------------------

def _synthetic() -> LoadReport:
    tasks = [
        TaskOutcome(0, "primes", 2, "succeeded", "a", 0, 0.0, 0.010, "miss", "queued", 1.0, "w-0", 950.0),
        TaskOutcome(1, "primes", 2, "succeeded", "b", 1, 0.1, 0.110, "hit", "succeeded", 0.115, "", 0.0),
        TaskOutcome(2, "fail", 1, "failed", "c", 2, 0.2, 0.210, "coalesced", "queued", 2.0, "w-1", 1700.0,
                    error="task failed as requested"),
        TaskOutcome(3, "hash", 1, "timeout", "d", 3, 0.3, 0.310, "miss", "queued", error="did not end"),
        TaskOutcome(4, "hash", 1, "unsubmitted", error="deadline"),
    ]
    requests = [RequestSample(i, 1, 0.1 * i, 0.010, 202, 1) for i in range(4)]
    return LoadReport({"tasks": 5, "producer": "http://p/", "results": "http://r/", "concurrency": 2,
                       "poll_concurrency": 2, "batch": 1, "rate": None, "deadline_s": 10.0,
                       "poll_wait_s": 20.0},
                      started_at=1.0, elapsed=3.0, tasks=tasks, requests=requests,
                      counters={"polls": 6, "submit_retries": 1})


def test_summary_counts_and_throughput() -> None:
    summary = _synthetic().summary()
    assert summary["ok"] is False
    assert summary["not_ended"] == 2
    assert summary["status"] == {"succeeded": 2, "failed": 1, "rejected": 0, "lost": 0, "timeout": 1,
                                 "unsubmitted": 1}
    assert summary["failed"] == {"total": 1, "expected_type_fail": 1, "unexpected": 0}
    assert summary["cache"] == {"hit": 1, "coalesced": 1, "miss": 2, "bypass": 0, "existing": 0}
    assert summary["workers"] == {"(cache hit: no worker)": 1, "w-0": 1, "w-1": 1}
    assert summary["submitted"] == 4 and summary["completed"] == 3
    assert summary["throughput"]["submitted_per_s"] == pytest.approx(4 / 0.31, rel=1e-3)
    assert summary["throughput"]["completed_per_s"] == pytest.approx(3 / 2.0)
    assert summary["throughput"]["server_completed"] == 0  # no record gave server times
    assert summary["throughput"]["server_completed_per_s"] is None
    assert summary["latency_ms"]["submit_to_result"]["max"] == pytest.approx(1800.0)
    assert summary["latency_ms"]["submission"]["p50"] == pytest.approx(10.0)
    assert summary["submit_to_result_by_cache_ms"]["hit"]["p50"] == pytest.approx(15.0)
    assert summary["timeline"]["completed"] == [1, 1, 1]
    assert [p["outcome"] for p in summary["problems"]] == ["timeout", "unsubmitted"]
    text = report.format_summary(_synthetic(), summary)
    assert "FAILED: 2 of 5 tasks" in text and "submit-to-result" in text


def test_report_json_shape(tmp_path: Any) -> None:
    result = _synthetic()
    path = report.write_json(result, tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert set(data) == {"config", "started_at", "elapsed_s", "summary", "counters", "server", "requests",
                         "tasks"}
    assert set(data["summary"]) >= {"throughput", "latency_ms", "status", "cache", "workers", "not_ended",
                                    "ok",
                                    "timeline", "failed", "requests"}
    latency = data["summary"]["latency_ms"]["submit_to_result"]
    assert set(latency) == {"count", "mean", "p50", "p90", "p99", "max"}
    assert len(data["tasks"]) == 5 and data["tasks"][0]["task_id"] == "a"


def test_chart(tmp_path: Any) -> None:
    path = report.write_chart(_synthetic(), tmp_path / "r.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# Work from before the run -------------------------------------------------------------------------

def _answered(cache: str | None, index: int, same_as: int) -> TaskOutcome:
    return TaskOutcome(index, "hash", 1, "succeeded", f"id{index}", index, 0.0, 0.01, cache, "succeeded",
                       0.02, same_as=same_as)


def _report(tasks: list[TaskOutcome]) -> LoadReport:
    return LoadReport({"tasks": len(tasks), "producer": "http://p/", "results": "http://r/", "concurrency": 1,
                       "poll_concurrency": 1, "batch": 1, "rate": None, "deadline_s": 10.0},
                      started_at=1.0, elapsed=1.0, tasks=tasks, requests=[])


def test_tasks_answered_by_work_from_before_the_run_are_counted() -> None:
    # Group 0: computed in the run (its miss came after the repeat's coalescing: order does not
    # matter). Group 2: all hits, so from before. Group 4: an id that existed. Group 5: a bypass.
    tasks = [_answered("coalesced", 0, 0), _answered("miss", 1, 0), _answered("hit", 2, 2),
             _answered("hit", 3, 2), _answered("existing", 4, 4), _answered("bypass", 5, 5)]
    summary = _report(tasks).summary()
    assert summary["done_before"] == {"total": 3, "hit": 2, "coalesced": 0, "existing": 1}
    assert report.reuse_warning(summary) is None  # 3 of 6 is not most of the run
    text = report.format_summary(_report(tasks), summary)
    assert "WARNING" not in text
    assert "OK: all 6 tasks ended in 1.0 s (3 answered by work from before this run)" in text

    mostly_cached = [*tasks, _answered("hit", 6, 6)]
    summary = _report(mostly_cached).summary()
    assert summary["done_before"]["total"] == 4
    warning = report.reuse_warning(summary)
    assert warning is not None
    assert warning.startswith("WARNING: 4 of 7 tasks were answered by work from before this run")
    assert "--no-cache" in warning and "--seed" in warning
    assert warning in report.format_summary(_report(mostly_cached), summary)
    # A system that reports no cache outcome is never said to have done nothing.
    assert _report([_answered(None, 0, 0)]).summary()["done_before"]["total"] == 0


def test_makespan_against_the_ideal() -> None:
    """Computed tasks (miss, bypass) make the simulated work; cache hits and coalesced copies do not.
    The makespan runs from the first submission to the last end on the server."""
    started = 1000.0
    tasks = [  # (complexity, cache, submit_start, server_finished_at in epoch ms)
        TaskOutcome(0, "sleep", 3, "succeeded", "a", 0, 0.5, 0.6, "miss", "queued", 4.0, "w-0",
                    server_finished_at=(started + 3.6) * 1000),
        TaskOutcome(1, "sleep", 1, "succeeded", "b", 1, 0.7, 0.8, "bypass", "queued", 2.0, "w-1",
                    server_finished_at=(started + 1.9) * 1000, stolen_from="w-0"),
        TaskOutcome(2, "sleep", 3, "succeeded", "a", 2, 0.9, 1.0, "coalesced", "queued", 4.1, "w-0",
                    server_finished_at=(started + 3.6) * 1000),
        TaskOutcome(3, "sleep", 5, "succeeded", "c", 3, 1.0, 1.1, "hit", "succeeded", 1.2, ""),
    ]
    workers = {"workers": [{"worker_id": "w-0", "concurrency": "1"}, {"worker_id": "w-1", "concurrency": 1}]}
    result = LoadReport({"tasks": 4, "producer": "http://p/", "results": "http://r/", "concurrency": 2,
                         "poll_concurrency": 2, "batch": 1, "rate": None, "deadline_s": 10.0,
                         "task_unit_seconds": 0.5}, started_at=started, elapsed=5.0, tasks=tasks,
                        requests=[], server={"workers": workers})
    summary = result.summary()
    assert summary["makespan"] == {"makespan_s": pytest.approx(3.1), "work_s": 2.0, "slots": 2,
                                   "ideal_s": 1.0, "ratio": pytest.approx(3.1)}
    assert summary["stolen"] == {"w-0": 1}
    text = report.format_summary(result, summary)
    assert "ideal 1.00 s (2.0 s of simulated work / 2 slots): ratio 3.100" in text
    assert "stolen from w-0 1" in text
    # Without the unit or the slots there is no ideal to compare with.
    assert LoadReport({**result.config, "task_unit_seconds": None}, started, 5.0, tasks, []).summary()[
        "makespan"] is None

"""A load test's report: the summary table printed at the end of a run (`format_summary`, with its
warning when the run mostly measured work from before it), the full JSON and a PNG chart (latency
histogram, completions over time). The chart needs matplotlib; without it only the JSON is written.
The figures themselves are bench/stats.py's."""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stats import ENDED, NOT_ENDED, LoadReport, RequestSample, TaskOutcome, summarize

REPORTS = Path(__file__).resolve().parent / "reports"


# The table ----------------------------------------------------------------------------------------

def reuse_warning(summary: dict[str, Any]) -> str | None:
    """A plain warning when most of the run was answered by work from before it, so that its
    figures measure lookups, not processing."""
    before, submitted = summary["done_before"], summary["submitted"]
    if not submitted or before["total"] * 2 <= submitted:
        return None
    return (f"WARNING: {before['total']:,} of {submitted:,} tasks were answered by work from before "
            f"this run (cache hit {before['hit']:,},\n  coalesced {before['coalesced']:,}, existing id "
            f"{before['existing']:,}): the figures above measure lookups, not processing. To measure\n"
            "  processing, run with --no-cache (make load-test ARGS=--no-cache) or a --seed not used before.")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def format_summary(report: LoadReport, summary: dict[str, Any] | None = None) -> str:
    """The human-readable summary table."""
    s = summary or summarize(report)
    c = report.config
    rate = f"{c['rate']:g} tasks/s" if c.get("rate") else "as fast as possible"
    source = c.get("source", "")
    lines = [
        f"load test: {s['tasks']:,} tasks{f' ({source})' if source else ''}; batch {c['batch']}, "
        f"concurrency {c['concurrency']} (polls {c['poll_concurrency']}), {rate}, "
        f"deadline {c['deadline_s']:g} s{', after a warm-up' if c.get('warmup') else ''}",
        f"  producer {c['producer']}   results {c['results'] or '(result_url of each reply)'}",
        "",
        f"{'throughput':<28}{'tasks':>9}{'window s':>11}{'tasks/s':>11}",
        f"{'  submitted':<28}{s['submitted']:>9,}{_fmt(s['throughput']['submit_window_s'], 2):>11}"
        f"{_fmt(s['throughput']['submitted_per_s']):>11}",
        f"{'  completed (result in hand)':<28}{s['completed']:>9,}"
        f"{_fmt(s['throughput']['complete_window_s'], 2):>11}{_fmt(s['throughput']['completed_per_s']):>11}",
    ]
    if s["throughput"]["server_window_s"] is not None:
        lines.append(f"{'  server: admitted-to-finish':<28}"
                     f"{s['throughput']['server_completed']:>9,}"
                     f"{_fmt(s['throughput']['server_window_s'], 2):>11}"
                     f"{_fmt(s['throughput']['server_completed_per_s']):>11}")
    span = s.get("makespan")
    if span:
        lines += ["", f"makespan    {span['makespan_s']:,.2f} s from the first submission to the last task's "
                      f"end; ideal {span['ideal_s']:,.2f} s ({span['work_s']:,.1f} s of simulated work / "
                      f"{span['slots']:g} slots): ratio {span['ratio']:.3f}"]
    lines += [
        "",
        f"{'latency (ms)':<28}{'count':>9}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}",
    ]
    rows = [("  submission (per request)", s["latency_ms"]["submission"]),
            ("  submit-to-result", s["latency_ms"]["submit_to_result"]),
            ("  server: admitted-to-finish", s["latency_ms"]["server_submit_to_finish"]),
            ("  finish-to-pickup", s["latency_ms"]["finish_to_pickup"])]
    rows += [(f"  submit-to-result, {name}", stats)
             for name, stats in s["submit_to_result_by_cache_ms"].items()]
    for label, stats in rows:
        if stats["count"]:
            lines.append(f"{label:<28}{stats['count']:>9,}" + "".join(
                f"{_fmt(stats[k]):>10}" for k in ("p50", "p90", "p99", "max")))
    status, failed = s["status"], s["failed"]
    lines += [
        "",
        "status      " + "  ".join(f"{name} {status[name]:,}" for name in ENDED)
        + f"   (failed: {failed['expected_type_fail']:,} of type fail, expected; "
          f"{failed['unexpected']:,} unexpected)",
        "not ended   " + "  ".join(f"{name} {status[name]:,}" for name in NOT_ENDED),
        "cache       " + "  ".join(f"{name} {count:,}" for name, count in s["cache"].items()),
        "per worker  " + ("  ".join(f"{name} {count:,}" for name, count in s["workers"].items()) or "-"),
        "stolen from " + ("  ".join(f"{name} {count:,}" for name, count in s["stolen"].items()) or "-")
        + "   (taken from the queue of the worker the round-robin picked, by an idle one)",
        f"requests    {s['requests']['submissions']:,} submissions "
        f"({s['requests']['submit_retries']:,} retries),"
        f" {s['requests']['polls']:,} polls ({s['requests']['poll_errors']:,} errors,"
        f" {s['requests']['poll_not_found']:,} not found)"
        + (f", max lag behind the rate {s['requests']['max_schedule_lag_ms']:,} ms" if c.get("rate") else ""),
    ]
    if s["requests"]["errors"]:
        lines.append("retried     " + "  ".join(f"{kind} x{count:,}"
                                                for kind, count in s["requests"]["errors"].items()))
    for problem in s["problems"][:10]:
        lines.append(f"  ! task {problem['index']} ({problem['type']}, id {problem['task_id']}): "
                     f"{problem['outcome']}: {(problem['error'] or '')[:120]}")
    lines.append("")
    warning = reuse_warning(s)
    if warning:
        lines += [warning, ""]
    before = s["done_before"]["total"]
    if s["ok"]:
        lines.append(f"OK: all {s['tasks']:,} tasks ended in {s['elapsed_s']:.1f} s"
                     + (f" ({before:,} answered by work from before this run)" if before else ""))
    else:
        lines.append(f"FAILED: {s['not_ended']:,} of {s['tasks']:,} tasks lost or not ended by the deadline")
    return "\n".join(lines)


# The files ----------------------------------------------------------------------------------------


def report_paths(directory: Path = REPORTS, name: str = "load",
                 started_at: float | None = None) -> tuple[Path, Path]:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started_at or time.time()))
    base = directory / f"{name}-{stamp}"
    return base.with_suffix(".json"), base.with_suffix(".png")


def write_json(report: LoadReport, path: Path, summary: dict[str, Any] | None = None) -> Path:
    data = report.to_json()
    if summary is not None:
        data["summary"] = summary
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def write_chart(report: LoadReport, path: Path, summary: dict[str, Any] | None = None) -> Path | None:
    """Two panels: submit-to-result (and submission) latency histogram, and tasks submitted and
    completed per second with their running totals. None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    s = summary or report.summary()
    series = [
        ("submit-to-result ({} tasks)", [t.latency * 1000 for t in report.tasks if t.latency is not None]),
        ("server: admitted-to-finish ({} tasks)",
         [t.server_ms for t in report.tasks if t.server_ms is not None]),
        ("submission ({} requests)", [r.latency * 1000 for r in report.requests if r.latency is not None]),
    ]
    series = [(label.format(f"{len(values):,}"), values) for label, values in series if values]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))

    if series:
        everything = [v for _, values in series for v in values]
        # Zeros (a cache hit's server time) cannot sit on a log axis: they land in the first bin.
        top, low = max(everything), max(0.5, min((v for v in everything if v > 0), default=0.5))
        if top / low > 50:
            import numpy as np

            bins: Any = np.logspace(np.log10(low), np.log10(top * 1.01), 50)
            left.set_xscale("log")
        else:
            bins = 50
        for label, values in series:
            left.hist([max(v, low) for v in values], bins=bins, alpha=0.55, label=label)
        counts = [len(values) for _, values in series]
        if max(counts) / max(1, min(counts)) > 20:
            left.set_yscale("log")  # 20 batch requests beside 2,000 tasks stay visible
        stats = s["latency_ms"]["submit_to_result"]
        for key, style in (("p50", "--"), ("p99", ":")):
            if stats[key] is not None:
                left.axvline(stats[key], color="black", linestyle=style, linewidth=1,
                             label=f"submit-to-result {key} {stats[key]:,.1f} ms")
        left.legend(fontsize=8)
    left.set_xlabel("latency (ms)")
    left.set_ylabel("count")
    left.set_title("Latency")

    line = s["timeline"]
    bucket = line["bucket_s"]
    slots = max(len(line["submitted"]), len(line["completed"]), len(line.get("finished_on_server", [])))
    xs = [i * bucket for i in range(slots)]
    ends = [x + bucket for x in xs]
    completed = line["completed"] or [0] * slots
    right.bar(xs, completed, width=bucket, align="edge", alpha=0.6, label="completed per s (in hand)")
    if line.get("finished_on_server"):
        right.step(ends, line["finished_on_server"], where="pre", color="tab:red", linewidth=1,
                   label="finished on the server per s")
    span = s.get("makespan")
    if span:
        first = min((t.submit_start for t in report.tasks if t.submit_start is not None), default=0.0)
        right.axvline(first + span["ideal_s"], color="black", linestyle="--", linewidth=1,
                      label=f"ideal end {span['ideal_s']:,.1f} s (work / slots)")
        right.axvline(first + span["makespan_s"], color="tab:purple", linestyle=":", linewidth=1.5,
                      label=f"last task end {span['makespan_s']:,.1f} s (x{span['ratio']:.2f})")
    right.set_xlabel("seconds since start")
    right.set_ylabel("tasks per second")
    totals = right.twinx()
    totals.plot(ends, list(itertools.accumulate(line["submitted"] or [0] * slots)), color="tab:orange",
                label="submitted (total)")
    totals.plot(ends, list(itertools.accumulate(completed)), color="tab:green", label="completed (total)")
    totals.set_ylabel("tasks (total)")
    handles = right.get_legend_handles_labels()
    more = totals.get_legend_handles_labels()
    right.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper left")
    tput = s["throughput"]
    right.set_title(f"Completions over time: {tput['completed_per_s'] or 0:,.1f} completed/s, "
                    f"{tput['submitted_per_s'] or 0:,.1f} submitted/s")

    c = report.config
    figure.suptitle(f"{s['tasks']:,} tasks, batch {c['batch']}, concurrency {c['concurrency']}"
                    f"{', rate ' + format(c['rate'], 'g') + '/s' if c.get('rate') else ''}: "
                    f"{'OK' if s['ok'] else str(s['not_ended']) + ' not ended'}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def load_json(path: Path) -> LoadReport:
    """A report written by write_json, back as a LoadReport (to re-render or re-summarise it)."""
    data = json.loads(Path(path).read_text())
    return LoadReport(config=data["config"], started_at=data["started_at"], elapsed=data["elapsed_s"],
                      tasks=[TaskOutcome(**task) for task in data["tasks"]],
                      requests=[RequestSample(**request) for request in data["requests"]],
                      counters=data.get("counters", {}), server=data.get("server", {}))


def main(argv: list[str] | None = None) -> int:
    """`python bench/report.py REPORT.json...`: prints each summary again and redraws its chart."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("reports", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.reports:
        report = load_json(path)
        summary = report.summary()
        print(format_summary(report, summary))
        chart = write_chart(report, path.with_suffix(".png"), summary)
        print(f"chart: {chart or '(matplotlib is not installed)'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Writes a load test's report: the full JSON and a PNG chart (latency histogram, completions over
time). The chart needs matplotlib; without it only the JSON is written."""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import LoadReport, RequestSample, TaskOutcome, format_summary

REPORTS = Path(__file__).resolve().parent / "reports"


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

"""Load test (`make load-test`): submits N tasks to a running system through its producer URL, waits
for every result with long-polls, prints a summary table and writes bench/reports/load-<time>.json
and .png. Exits 1 if any task was lost or did not end by the deadline, 2 on a usage error.

    python bench/load_test.py [--count 100] [--seed 1] [--repeat-share 0.2] [--replay FILE] [--no-cache]
        [--concurrency 16] [--batch K] [--rate R] [--deadline 300] [--producer URL] [--results URL]
    make load-test ARGS="-n 500 --no-cache"

The same seed gives the same tasks, so a second run is answered from the result cache of the first
(for CACHE_TTL, an hour): the summary says so when most of a run did no work of its own. Use
--no-cache (every task computed: "cache": false), or another --seed, to measure processing.

The targets default to the producer and supervisor URLs in .localfaas/state.json (`make run`).
Any system with the same HTTP contract can be driven (see bench/contract.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import driver, report, workload  # noqa: E402
from taskcore.signing import Signer  # noqa: E402


class ProgressBar:
    """One line on stderr, redrawn with \\r on a terminal; a line every few seconds otherwise."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30, every: float = 5.0) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.every = every
        self.printed_at = -every
        self.length = 0

    def __call__(self, p: driver.Progress) -> None:
        if not self.tty and not p.final and p.elapsed - self.printed_at < self.every:
            return
        self.printed_at = p.elapsed
        total = max(1, p.total)
        done = round(self.width * p.done / total)
        sent = max(done, round(self.width * (p.submitted + p.lost) / total))
        bar = "#" * done + "-" * (sent - done) + "." * (self.width - sent)
        line = (f"[{bar}] submitted {p.submitted:,}/{p.total:,}  done {p.done:,}  failed {p.failed:,}"
                f"{f'  lost {p.lost:,}' if p.lost else ''}{f'  retries {p.retries:,}' if p.retries else ''}"
                f"  {p.elapsed:6.1f} s")
        if self.tty:
            self.stream.write("\r" + line + " " * max(0, self.length - len(line)) + ("\n" if p.final else ""))
            self.length = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def state_urls(path: Path) -> tuple[str, str]:
    state = json.loads(path.read_text())
    return state["urls"]["Producer"], state["urls"]["Supervisor"]


def local_signer(env_file: Path) -> Signer | None:
    """SigV4 with the credentials of the environment, else of the env file (`make run`'s key pair,
    which localfaas accepts on AWS_IAM URLs such as the supervisor's)."""
    return Signer.from_env(os.environ) or (Signer.from_env(dotenv_values(env_file, interpolate=False))
                                           if env_file.exists() else None)


def server_info(results_url: str, signer: Signer | None, timeout: float = 5.0) -> dict[str, Any]:
    """GET stats and workers next to the results endpoint, when the system has them (best effort)."""
    info: dict[str, Any] = {}
    for name in ("stats", "workers"):
        url = results_url.rstrip("/") + "/" + name
        request = urllib.request.Request(url, headers=signer.headers("GET", url) if signer else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                info[name] = json.loads(response.read())
        except (OSError, ValueError):
            continue
    return info


def unit_seconds(given: float | None, env_file: Path) -> float:
    """The stack's TASK_UNIT_SECONDS: as given, else as the environment or the env file sets it."""
    if given is not None:
        return given
    file_values = dotenv_values(env_file, interpolate=False) if env_file.exists() else {}
    raw = os.environ.get("TASK_UNIT_SECONDS") or file_values.get("TASK_UNIT_SECONDS") or "1"
    return float(raw)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, "") or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0].replace("\n", " "),
                                     formatter_class=_Help)
    source = parser.add_argument_group("tasks")
    source.add_argument("--count", "-n", type=int, default=100, help="tasks to generate")
    source.add_argument("--seed", type=int, default=1, help="seed of the generated tasks")
    source.add_argument("--repeat-share", type=float, default=0.2,
                        help="share of generated tasks that repeat an earlier one (cache hits, coalescing)")
    source.add_argument("--include-failures", action="store_true",
                        help="also generate tasks of type fail (they end failed: expected, not lost)")
    source.add_argument("--replay", metavar="FILE", help="send the tasks of this JSON list as they are")
    source.add_argument("--save-tasks", metavar="FILE",
                        help="write the task list as JSON (to --replay later)")
    source.add_argument("--no-cache", action="store_true",
                        help="send every task with \"cache\": false: computed, neither answered from "
                             "the result cache nor coalesced, and not cached either")
    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", "-c", type=int, default=16, help="submission requests at once")
    load.add_argument("--poll-concurrency", type=int,
                      help="result requests at once, a quarter of them quick GETs for cache hits "
                           "(default: --concurrency)")
    load.add_argument("--batch", "-b", type=int, default=1,
                      help="tasks per request ({\"tasks\": [...]} when > 1)")
    load.add_argument("--rate", type=float, help="tasks per second (default: as fast as possible)")
    load.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole run")
    load.add_argument("--warmup", action="store_true",
                      help="start the target's execution environments first with requests that create "
                           "no task (untimed)")
    load.add_argument("--poll-batch", type=int, default=1,
                      help="results per request (GET {results}results?ids=...) when > 1")
    load.add_argument("--poll-wait", type=float, default=driver.MAX_POLL_WAIT, help="seconds per long-poll")
    target = parser.add_argument_group("target")
    target.add_argument("--producer", help="producer base URL (POST {producer}produce)")
    target.add_argument("--results", help="results base URL (GET {results}results/{id}?wait=S)")
    target.add_argument("--env-file", type=Path, default=ROOT / "infra" / "local.env",
                        help="credentials to sign with (SigV4) when the environment has none")
    target.add_argument("--unit-seconds", type=float, default=None,
                        help="the stack's TASK_UNIT_SECONDS, for the ideal makespan (default: the "
                             "environment's, else the env file's, else 1)")
    target.add_argument("--unsigned", action="store_true", help="sign nothing (a target without AWS_IAM)")
    target.add_argument("--sign-submissions", action="store_true",
                        help="sign POST /produce too (the producer's URL with ProducerAuthType AWS_IAM)")
    target.add_argument("--state", type=Path, default=ROOT / ".localfaas" / "state.json",
                        help="localfaas state file read for the URLs not given")
    out = parser.add_argument_group("output")
    out.add_argument("--reports", type=Path, default=report.REPORTS, help="folder of the JSON and PNG")
    out.add_argument("--name", default="load", help="file name prefix of the report")
    out.add_argument("--label", default="",
                     help="free text stored in the report (e.g. the system under test)")
    out.add_argument("--no-report", action="store_true", help="write no files")
    out.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    args = parser.parse_args(argv)
    if args.count < 0 or args.concurrency < 1 or args.batch < 1 or args.deadline <= 0:
        parser.error("--count must be >= 0, --concurrency and --batch >= 1, --deadline > 0")
    if args.batch > 500:
        parser.error("--batch is at most 500 (the producer's MAX_BATCH)")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    if not 0 <= args.repeat_share <= 1:
        parser.error("--repeat-share must be from 0 to 1")
    if not 1 <= args.poll_batch <= 500:
        parser.error("--poll-batch must be from 1 to 500 (MAX_BATCH)")
    if not 0 <= args.poll_wait <= driver.MAX_POLL_WAIT:
        parser.error(f"--poll-wait must be from 0 to {driver.MAX_POLL_WAIT:g}")
    return args


def run_loop(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    producer, results = args.producer, args.results
    if not (producer and results):
        try:
            state_producer, state_results = state_urls(args.state)
        except (OSError, ValueError, KeyError) as error:
            print(f"load_test: no --producer/--results and no usable {args.state} ({error}); "
                  "start the system with `make run` or pass both URLs", file=sys.stderr)
            return 2
        producer, results = producer or state_producer, results or state_results
    if args.replay:
        try:
            tasks = workload.load_tasks(args.replay)
        except (OSError, ValueError) as error:
            print(f"load_test: {error}", file=sys.stderr)
            return 2
        source = f"replay of {args.replay}"
    else:
        tasks = workload.make_tasks(args.count, args.seed, args.repeat_share, args.include_failures)
        source = (f"seed {args.seed}, {args.repeat_share:.0%} repeats"
                  f"{', with failures' if args.include_failures else ''}")
    if args.no_cache:
        tasks = [{**task, "cache": False} for task in tasks]
        source += ", no cache"
    if args.save_tasks:
        Path(args.save_tasks).write_text(json.dumps(tasks))
    config = {"source": source, "label": args.label, "argv": sys.argv[1:] if argv is None else argv,
              "seed": None if args.replay else args.seed,
              "repeat_share": None if args.replay else args.repeat_share, "no_cache": args.no_cache,
              "task_unit_seconds": unit_seconds(args.unit_seconds, args.env_file)}
    progress = None if args.no_progress else ProgressBar()
    signer = None if args.unsigned else local_signer(args.env_file)
    started = time.time()
    result = run_loop(driver.run_load(
        tasks, producer, results, concurrency=args.concurrency, batch=args.batch, rate=args.rate,
        deadline=args.deadline, progress=progress, poll_concurrency=args.poll_concurrency,
        poll_wait=args.poll_wait, poll_batch=args.poll_batch, warmup=args.warmup,
        signer=signer, sign_submissions=signer is not None and args.sign_submissions, config=config))
    result.server = server_info(results, signer)
    summary = result.summary()
    print(report.format_summary(result, summary))
    if not args.no_report:
        json_path, png_path = report.report_paths(args.reports, args.name, started)
        report.write_json(result, json_path, summary)
        chart = report.write_chart(result, png_path, summary)
        print(f"report: {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}"
              + (f", chart: {png_path.name}" if chart else " (no chart: matplotlib is not installed)"))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

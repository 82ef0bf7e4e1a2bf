"""`taskfaas`: submit tasks to a running stack and read what became of them, without curl or a
signing recipe. Exit codes: 0 ok, 1 the stack answered an error (or an id is unknown), 2 bad
usage or input, 3 a waited task failed, 4 no stack found or unreachable, 5 still not final when
the wait ran out."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from taskcore.signing import Signer
from taskfaas.client import (
    FINAL,
    PROJECT_ROOT,
    ApiError,
    Client,
    Endpoints,
    StackError,
    credentials,
    from_lambda_api,
    from_state_file,
)

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_FAILED, EXIT_STACK, EXIT_NOT_FINAL = 0, 1, 2, 3, 4, 5


class InputError(Exception):
    """What the user typed cannot be used (JSON that does not parse, a missing file...)."""


class Exit(Exception):
    """Ends the command with this code and one line on stderr, after its output."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = connect(args)
        args.command(client, args)
        return EXIT_OK
    except Exit as done:
        return _fail(done.code, str(done))
    except ApiError as error:
        return _fail(EXIT_API, str(error))
    except StackError as error:
        return _fail(EXIT_STACK, str(error))
    except InputError as error:
        return _fail(EXIT_USAGE, str(error))
    except KeyboardInterrupt:
        return EXIT_OK  # how `tail --follow` ends


def _fail(code: int, message: str) -> int:
    print(f"taskfaas: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("which stack (explicit URLs, else --endpoint-url, else the state file)")
    where.add_argument("--run-dir", type=Path, help="localfaas's run directory, with state.json "
                       "(default: ./.localfaas, else the project's .localfaas)")
    where.add_argument("--endpoint-url", help="a Lambda API (localfaas's control port, or AWS's) to ask "
                       "for the function URLs (GetFunctionUrlConfig)")
    where.add_argument("--producer-function", default="Producer", help="its name (default Producer)")
    where.add_argument("--supervisor-function", default="Supervisor", help="its name (default Supervisor)")
    where.add_argument("--producer-url")
    where.add_argument("--supervisor-url")
    common.add_argument("--json", action="store_true", help="print the JSON answers, for scripts")
    common.add_argument("--timeout", type=float, default=30, help="seconds per request (default 30)")

    parser = argparse.ArgumentParser(prog="taskfaas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", parents=[common], help="submit a task, or several as a batch")
    submit.add_argument("task", metavar="TYPE|@FILE", help="a task type (primes, hash, sleep, fail), or "
                        "@file / - holding a task, a list of tasks or {\"tasks\": [...]}")
    submit.add_argument("--payload", action="append", metavar="JSON|@FILE",
                        help="the task's payload; repeat it for a batch of tasks of TYPE")
    submit.add_argument("--complexity", type=int, help="1-10 (default 1)")
    submit.add_argument("--no-cache", action="store_true", help="compute it again even when cached")
    submit.add_argument("--task-id", help="an id of your own (makes the submission idempotent)")
    submit.add_argument("--wait", type=float, metavar="S", help="wait up to S seconds for the result(s)")
    submit.set_defaults(command=cmd_submit)

    result = commands.add_parser("result", parents=[common], help="the record(s) of task ids")
    result.add_argument("task_ids", nargs="+", metavar="ID")
    result.add_argument("--wait", type=float, default=0, metavar="S", help="wait up to S seconds to be final")
    result.set_defaults(command=cmd_result)

    commands.add_parser("workers", parents=[common], help="live workers and the dead not yet reaped") \
        .set_defaults(command=cmd_workers)
    commands.add_parser("stats", parents=[common], help="counts, cache ratios, queue depths, throughput") \
        .set_defaults(command=cmd_stats)

    tail = commands.add_parser("tail", parents=[common], help="recently submitted tasks, newest first")
    tail.add_argument("--limit", type=int, default=20, help="1-100 (default 20)")
    tail.add_argument("--state", help="queued, running, succeeded or failed")
    tail.add_argument("--type", help="a task type")
    tail.add_argument("--follow", action="store_true", help="keep printing tasks as they arrive or change "
                      "status (oldest first, as tail -f; Ctrl-C ends it)")
    tail.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    tail.set_defaults(command=cmd_tail)
    return parser


def connect(args: argparse.Namespace) -> Client:
    creds = credentials()
    if args.producer_url or args.supervisor_url:
        endpoints = Endpoints(args.producer_url, args.supervisor_url)
    elif args.endpoint_url:
        names = [args.producer_function, args.supervisor_function]
        endpoints = from_lambda_api(args.endpoint_url, names, creds)
    else:
        endpoints = from_state_file(args.run_dir or _default_run_dir())
    return Client(endpoints, Signer.from_env(creds), args.timeout)


def _default_run_dir() -> Path:
    here = Path.cwd() / ".localfaas"
    return here if (here / "state.json").exists() else PROJECT_ROOT / ".localfaas"


# Commands ----------------------------------------------------------------------------------------

def cmd_submit(client: Client, args: argparse.Namespace) -> None:
    body, batch = submission(args)
    reply = client.submit(body)
    if args.wait is None:
        if args.json:
            _print_json(reply)
        else:
            print(_table(reply["tasks"], _ACCEPTED) if batch else _block(reply))
        return
    task_ids = [item["task_id"] for item in (reply["tasks"] if batch else [reply])]
    _show_results(client, task_ids, args.wait, args.json, single=not batch)


def cmd_result(client: Client, args: argparse.Namespace) -> None:
    _show_results(client, args.task_ids, args.wait, args.json, single=len(args.task_ids) == 1)


def cmd_workers(client: Client, args: argparse.Namespace) -> None:
    report = client.supervisor("workers")
    if args.json:
        _print_json(report)
        return
    print(_table(report["workers"] + report["dead"], _WORKER) if report["workers"] or report["dead"]
          else "no workers")


def cmd_stats(client: Client, args: argparse.Namespace) -> None:
    stats = client.supervisor("stats")
    if args.json:
        _print_json(stats)
        return
    for name, value in stats.items():
        label = name.replace("_", " ")
        if isinstance(value, dict) and name == "queues":  # long names: one a line
            print(label)
            for queue, depth in value.items():
                print(f"  {queue:<40}{'-' if depth is None else depth}")
            continue
        if isinstance(value, dict):
            value = "  ".join(f"{k} {v}" for k, v in value.items())
        print(f"{label:<24}{'-' if value is None else value}")


def cmd_tail(client: Client, args: argparse.Namespace) -> None:
    filters = {**({"state": args.state} if args.state else {}), **({"type": args.type} if args.type else {})}
    # Following: a window of the newest 100 tells new from seen (read first, so that nothing
    # submitted in between is missed or shown twice).
    window = {"limit": 100, **filters}
    latest = client.supervisor("tasks", window)["tasks"] if args.follow else []
    records = client.supervisor("tasks", {"limit": args.limit, **filters})["tasks"]
    if not args.follow:
        if args.json:
            _print_json({"tasks": records})
        else:
            print(_table(records, _RECORD) if records else "no tasks")
        return
    # As tail -f: oldest first, the newest at the bottom; then each task again whenever it is seen
    # in a new status.
    show: Callable[[dict[str, Any]], str] = json.dumps if args.json else lambda r: _row(r, _RECORD)
    if not args.json:
        print(_header(_RECORD), flush=True)
    for record in reversed(records):
        print(show(record), flush=True)
    latest += records
    while True:
        seen = {(r["task_id"], r["status"]) for r in latest}
        time.sleep(args.interval)
        latest = client.supervisor("tasks", window)["tasks"]
        for record in reversed(latest):
            if (record["task_id"], record["status"]) not in seen:
                print(show(record), flush=True)


def _show_results(client: Client, task_ids: Sequence[str], wait: float, as_json: bool, single: bool) -> None:
    records, missing = client.results(task_ids, wait)
    if as_json:
        _print_json(records[0] if single and records else {"results": records, "not_found": missing})
    elif records:
        print(_block(records[0]) if single else _table(records, _RECORD))
    if missing:
        raise Exit(EXIT_API, f"404 not_found: no task {', '.join(missing)}")
    failed = [r for r in records if r["status"] == "failed"]
    if wait and failed:
        raise Exit(EXIT_FAILED, "; ".join(f"task {r['task_id']} failed: {r.get('error')}" for r in failed))
    pending = [r for r in records if r["status"] not in FINAL]
    if wait and pending:
        raise Exit(EXIT_NOT_FINAL, f"not final after {wait:g} s: " +
                   ", ".join(f"{r['task_id']} ({r['status']})" for r in pending))


# Input -------------------------------------------------------------------------------------------

def submission(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """The body of POST /produce, and whether it is a batch."""
    if args.task == "-" or args.task.startswith("@"):
        if args.payload or args.complexity is not None or args.no_cache or args.task_id:
            raise InputError("a task file holds whole tasks: --payload, --complexity, --no-cache and "
                             "--task-id go with a TYPE")
        data = _load_json(args.task, "the task file")
        if isinstance(data, list):
            return {"tasks": data}, True
        return data, isinstance(data, dict) and "tasks" in data
    payloads = [_load_json(p, "--payload") for p in args.payload or ["{}"]]
    if args.task_id and len(payloads) > 1:
        raise InputError("--task-id names one task: give one --payload with it")
    tasks = []
    for payload in payloads:
        task: dict[str, Any] = {"type": args.task, "payload": payload}
        if args.complexity is not None:
            task["complexity"] = args.complexity
        if args.no_cache:
            task["cache"] = False
        if args.task_id:
            task["task_id"] = args.task_id
        tasks.append(task)
    return ({"tasks": tasks}, True) if len(tasks) > 1 else (tasks[0], False)


def _load_json(text: str, what: str) -> Any:
    try:
        if text == "-":
            text = sys.stdin.read()
        elif text.startswith("@"):
            text = Path(text[1:]).read_text()
        return json.loads(text)
    except OSError as error:
        raise InputError(f"{what}: {error}") from None
    except ValueError as error:
        raise InputError(f"{what} is not JSON: {error}") from None


# Output ------------------------------------------------------------------------------------------

# Columns: (heading, field, minimum width).
_RECORD = (("TASK_ID", "task_id", 36), ("TYPE", "type", 6), ("STATUS", "status", 9), ("CACHE", "cache", 9),
           ("WORKER", "worker_id", 6), ("SUBMITTED", "submitted_at", 12), ("RESULT", "outcome", 0))
_ACCEPTED = (("TASK_ID", "task_id", 36), ("STATUS", "status", 9), ("CACHE", "cache", 9),
             ("RESULT", "outcome", 0))
_WORKER = (("WORKER", "worker_id", 8), ("LIVE", "live", 5), ("HOST", "host", 8), ("PID", "pid", 7),
           ("CONCURRENCY", "concurrency", 11), ("IN_FLIGHT", "in_flight", 9), ("PROCESSED", "processed", 9),
           ("HEARTBEAT_AGE", "heartbeat_age", 13),
           # Seconds still left out of the round-robin: its queue did not confirm a publish.
           ("UNCONFIRMED_FOR", "unconfirmed_for", 0))
_BLOCK_FIELDS = ("task_id", "status", "type", "payload", "complexity", "cache", "existing", "worker_id",
                 "leader", "attempt", "submitted_at", "started_at", "finished_at", "result", "error",
                 "result_url")


def _cell(record: dict[str, Any], field: str) -> str:
    if field == "outcome":
        if "error" in record:
            text = f"error: {record['error']}"
        else:
            text = json.dumps(record["result"]) if "result" in record else ""
        return text if len(text) <= 60 else text[:57] + "..."
    value = record.get(field)
    if value is None or value == "":
        return "-"
    if field.endswith("_at") and isinstance(value, int):
        return time.strftime("%H:%M:%S", time.localtime(value / 1000)) + f".{value % 1000:03d}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _header(columns: Iterable[tuple[str, str, int]]) -> str:
    return "  ".join(heading.ljust(width) for heading, _, width in columns).rstrip()


def _row(record: dict[str, Any], columns: Iterable[tuple[str, str, int]]) -> str:
    return "  ".join(_cell(record, field).ljust(width) for _, field, width in columns).rstrip()


def _table(records: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, int]]) -> str:
    widths = [max([width, len(heading)] + [len(_cell(r, field)) for r in records]) if width else 0
              for heading, field, width in columns]
    sized = [(heading, field, width) for (heading, field, _), width in zip(columns, widths, strict=True)]
    return "\n".join([_header(sized), *(_row(r, sized) for r in records)])


def _block(record: dict[str, Any]) -> str:
    lines = []
    for field in (*_BLOCK_FIELDS, *sorted(set(record) - set(_BLOCK_FIELDS))):
        value = record.get(field)
        if value in ("", None) or (field == "existing" and value is False):
            continue
        as_json = field == "result" or isinstance(value, dict | list)
        lines.append(f"{field:<14}{json.dumps(value) if as_json else _cell(record, field)}")
    return "\n".join(lines)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


if __name__ == "__main__":
    sys.exit(main())

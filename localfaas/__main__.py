"""`localfaas start|invoke|status|deploy` (also `python -m localfaas ...`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localfaas.cfn import TemplateError
from localfaas.logs import ConsoleMode, error_summary

DEFAULT_ENV_FILE = Path("infra/local.env")


class OverrideError(ValueError):
    """A --parameter-overrides value that is neither Key=Value nor ParameterKey=K,ParameterValue=V."""


_KEY = re.compile(r"[A-Za-z0-9_]+")
_LONG_FORM = "ParameterKey="
_LONG_VALUE = ",ParameterValue="


def parse_parameter_overrides(values: Sequence[str]) -> dict[str, str]:
    """`--parameter-overrides` as `sam deploy` takes it: pairs written `Key=Value` or
    `ParameterKey=Key,ParameterValue=Value`, mixed freely, several after one flag or in one argument
    (separated by spaces; quote a value that has spaces: `Key='a b'`). A later pair wins."""
    pairs: dict[str, str] = {}
    for value in values:
        try:
            items = shlex.split(value)
        except ValueError as exc:
            raise OverrideError(f"cannot read {value!r}: {exc}") from exc
        for item in items:
            key, val = _override(item)
            pairs[key] = val
    return pairs


def _override(item: str) -> tuple[str, str]:
    if item.startswith(_LONG_FORM):
        key, sep, value = item.removeprefix(_LONG_FORM).partition(_LONG_VALUE)
    else:
        key, sep, value = item.partition("=")
    if not sep or not _KEY.fullmatch(key):
        hint = " (is the template path after --parameter-overrides? put it first)" \
            if item.endswith((".yaml", ".yml", ".json")) else ""
        raise OverrideError(f"{item!r} is not Key=Value or ParameterKey=Key,ParameterValue=Value "
                            f"(quote a value with spaces: Key='a b'){hint}")
    return key, value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _start(args: argparse.Namespace) -> int:
    from localfaas.environment import RuntimeClient
    from localfaas.host import HostConfig
    from localfaas.pool import Pacing

    try:
        overrides = parse_parameter_overrides(args.parameter_overrides)
    except OverrideError as exc:
        print(f"localfaas: --parameter-overrides: {exc}", file=sys.stderr)
        return 2
    try:
        runtime_client = RuntimeClient(args.runtime_client)
    except ValueError:
        print(f"localfaas: LOCALFAAS_RUNTIME_CLIENT={args.runtime_client!r}: choose from "
              f"{', '.join(RuntimeClient)}", file=sys.stderr)
        return 2
    env_file = args.env_file if args.env_file is not None else (
        DEFAULT_ENV_FILE if DEFAULT_ENV_FILE.exists() else None)
    config = HostConfig(
        template=Path(args.template).resolve(),
        env_file=env_file,
        parameter_overrides=overrides,
        host=args.host,
        port=args.port,
        url_port_base=args.url_port_base,
        run_dir=Path(args.run_dir).resolve(),
        default_concurrency=args.concurrency,
        max_environments=args.max_environments,
        pacing=Pacing(**{key: value for key, value in (
            ("base", args.base_environments), ("in_flight", args.cold_starts),
            ("after", None if args.scale_after_ms is None else args.scale_after_ms / 1000),
        ) if value is not None}),
        **({} if args.queue_seconds is None else {"queue_seconds": args.queue_seconds}),
        idle_seconds=args.idle_seconds,
        async_retry_seconds=args.async_retry_seconds,
        minute_seconds=args.minute_seconds,
        console=ConsoleMode(args.console),
        summary_seconds=args.summary_seconds,
        runtime_client=runtime_client,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_serve(config))


async def _serve(config: Any) -> int:
    from localfaas.host import Host

    try:
        host = Host(config)
    except (TemplateError, OSError) as exc:
        print(f"localfaas: cannot start: {exc}", file=sys.stderr)
        return 2
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await host.start()
    await stopping.wait()
    host.logs.host("stopping")
    await host.stop()
    return 0


def _endpoint(args: argparse.Namespace) -> str:
    if args.endpoint:
        return args.endpoint.rstrip("/")
    state = Path(args.run_dir) / "state.json"
    if state.exists():
        return json.loads(state.read_text())["endpoint"]
    return os.environ.get("LOCALFAAS_ENDPOINT", "http://127.0.0.1:4566")


class Unreachable(Exception):
    """The control endpoint did not answer: no host is running there."""


def _request(url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=960) as response:
            return response.status, _lower(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers), error.read()
    except urllib.error.URLError as error:
        raise Unreachable(f"cannot reach {url}: {error.reason}; is localfaas running? "
                          f"(`make run`, or .venv/bin/localfaas start)") from error


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


# `invoke` exit codes: the function's own failures apart from invocations that never happened.
EXIT_FUNCTION_FAILED = 1  # FunctionError (Unhandled), or an HTTP-style answer with a 5xx statusCode
EXIT_NOT_INVOKED = 2  # no such function, throttled, payload refused, host unreachable


INVOKE_EXIT_CODES = (f"Prints the function's answer. Exit status 0 if it returned, "
                     f"{EXIT_FUNCTION_FAILED} if it failed (FunctionError, or an HTTP-style answer "
                     f"with statusCode 5xx), "
                     f"{EXIT_NOT_INVOKED} if it did not run (unknown function, throttled, bad payload, "
                     f"no host).")


def _invoke(args: argparse.Namespace) -> int:
    payload = args.payload
    if payload.startswith("@"):
        try:
            payload = Path(payload[1:]).read_text()
        except OSError as exc:
            print(f"localfaas: cannot read the payload file: {exc}", file=sys.stderr)
            return EXIT_NOT_INVOKED
    status, headers, body = _request(
        f"{_endpoint(args)}/2015-03-31/functions/{args.name}/invocations", payload.encode())
    text = body.decode("utf-8", "replace")
    if status != 200:  # the Lambda API refused: the function did not run
        try:
            message = json.loads(body).get("message") or text
        except (ValueError, AttributeError):
            message = text
        error_type = headers.get("x-amzn-errortype", "").split(":")[0] or f"HTTP {status}"
        print(f"localfaas: {error_type}: {message}", file=sys.stderr)
        return EXIT_NOT_INVOKED
    print(text)
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if "x-amz-function-error" in headers:
        error_type, message = error_summary(body)
        print(f"localfaas: {args.name} failed (FunctionError {headers['x-amz-function-error']}): "
              f"{error_type}: {message}", file=sys.stderr)
        return EXIT_FUNCTION_FAILED
    http_status = document.get("statusCode") if isinstance(document, dict) else None
    if isinstance(http_status, int) and http_status >= 500:
        # What a function-URL client would see as a server error. Lambda itself calls this a
        # success; so does `aws lambda invoke`, but a script asking "did it work?" wants a no.
        print(f"localfaas: {args.name} answered HTTP {http_status} (an HTTP-style response, no "
              f"FunctionError); a function behind a URL expects a function-URL event "
              f"(payload format 2.0) as its payload", file=sys.stderr)
        return EXIT_FUNCTION_FAILED
    return 0


def _status(args: argparse.Namespace) -> int:
    status, _, body = _request(f"{_endpoint(args)}/_localfaas/status")
    state = json.loads(body)
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"endpoint {state['endpoint']}")
    print(f"{'function':<20} {'envs':>4} {'warm':>4} {'busy':>4} {'max':>4} {'invocations':>11}  url")
    for name, fn in state["functions"].items():
        print(f"{name:<20} {fn['environments']:>4} {fn['warm']:>4} {fn['busy']:>4} "
              f"{fn['max_concurrency']:>4} {fn['invocations']:>11}  {fn['url'] or '-'}")
    for mapping in state["mappings"]:
        print(f"mapping {mapping['function']} <- {mapping['queue']}: "
              f"{'connected' if mapping['connected'] else 'DISCONNECTED'}, "
              f"{mapping['batches']} batches, {mapping['messages']} messages")
    return 0 if status == 200 else 1


def _deploy(args: argparse.Namespace) -> int:
    status, _, body = _request(f"{_endpoint(args)}/_localfaas/deploy", b"")
    result = json.loads(body)
    if status != 200:
        print(f"localfaas: deploy failed: {result.get('error')}", file=sys.stderr)
        return 1
    print("deployed: " + (", ".join(result["deployed"]) or "nothing changed"))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="localfaas",
                                   description="Run a SAM template locally, as Lambda would.")
    commands = root.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="run the template's functions")
    start.add_argument("template", nargs="?", default="template.yaml")
    start.add_argument("--env-file", type=Path, default=None,
                       help=f"settings and parameter values (default {DEFAULT_ENV_FILE} if present)")
    start.add_argument("--parameter-overrides", action="extend", nargs="+", default=[],
                       metavar="KEY=VALUE",
                       help="template parameters, as sam deploy takes them: Key=Value or "
                            "ParameterKey=Key,ParameterValue=Value, several after one flag")
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=int(os.environ.get("LOCALFAAS_PORT", 4566)),
                       help="control port (Lambda API); 0 picks free ports for everything")
    start.add_argument("--url-port-base", type=int, default=None,
                       help="first function URL port (default: the ports after the control port)")
    start.add_argument("--run-dir", default=".localfaas", help="logs and state.json go here")
    start.add_argument("--concurrency", type=int, default=32,
                       help="invocations in flight per function (running or waiting in line) when "
                            "ReservedConcurrentExecutions is unset: Lambda's account limit")
    # Their defaults are pool.Pacing's; the pool is not imported here, so that status, invoke and
    # deploy do not load the host's modules.
    start.add_argument("--max-environments", type=_positive_int,
                       default=os.environ.get("LOCALFAAS_MAX_ENVIRONMENTS") or None,
                       help="a hard cap on environments (processes) per function; invocations beyond "
                            "wait in line however long (default: none, the concurrency limit; "
                            "env LOCALFAAS_MAX_ENVIRONMENTS)")
    start.add_argument("--base-environments", type=_positive_int,
                       default=os.environ.get("LOCALFAAS_BASE_ENVIRONMENTS") or None,
                       help="environments a function gets for its line without waiting, and keeps "
                            "free of long-running invocations (default: 2 per CPU, at least 4)")
    start.add_argument("--scale-after-ms", type=float,
                       default=os.environ.get("LOCALFAAS_SCALE_AFTER_MS") or None,
                       help="beyond the base, a new environment once the line's head has waited this "
                            "long behind long-running invocations (default 500)")
    start.add_argument("--cold-starts", type=_positive_int,
                       default=os.environ.get("LOCALFAAS_COLD_STARTS") or None,
                       help="at most this many cold starts at a time per function (default 2)")
    # The default is pool.DEFAULT_QUEUE_SECONDS (HostConfig's).
    start.add_argument("--queue-seconds", type=float, default=None,
                       help="a synchronous invocation waits at most this long in line for an "
                            "environment, then gets 429 TooManyRequestsException (default 10)")
    start.add_argument("--idle-seconds", type=float, default=300.0, help="reap environments idle this long")
    start.add_argument("--async-retry-seconds", type=float, default=60.0,
                       help="wait before retrying a failed async invocation (doubled for the second)")
    start.add_argument("--minute-seconds", type=float, default=60.0,
                       help="length of a schedule rate's minute, to shorten rates in development")
    start.add_argument("--console", choices=[mode.value for mode in ConsoleMode],
                       default=ConsoleMode.QUIET.value,
                       help="quiet: cold starts, errors and a periodic summary; full: every function "
                            "log line too (always in <run dir>/logs/<function>.log)")
    start.add_argument("--summary-seconds", type=float, default=10.0,
                       help="how often the console sums up what ran (only when something did)")
    # The choices are localfaas.environment.RuntimeClient's (checked in _start, for the variable too).
    start.add_argument("--runtime-client", choices=("official", "lean"),
                       default=os.environ.get("LOCALFAAS_RUNTIME_CLIENT", "lean"),
                       help="what every environment runs: lean (default; env LOCALFAAS_RUNTIME_CLIENT): "
                            "localfaas.lean_runtime, awslambdaric's bootstrap over one plain socket, "
                            "about 0.3 ms less CPU per invocation; official: python -m awslambdaric")
    start.set_defaults(run=_start)

    for name, handler, text in (("invoke", _invoke, "invoke a function (RequestResponse)"),
                                ("status", _status, "show functions, environments, mappings"),
                                ("deploy", _deploy, "reload changed code without dropping invocations")):
        command = commands.add_parser(name, help=text, epilog=INVOKE_EXIT_CODES if name == "invoke" else None)
        command.add_argument("--endpoint", default=None, help="control endpoint (default from --run-dir)")
        command.add_argument("--run-dir", default=".localfaas")
        command.set_defaults(run=handler)
        if name == "invoke":
            command.add_argument("name")
            command.add_argument("--payload", default="{}", help="JSON text, or @file")
        if name == "status":
            command.add_argument("--json", action="store_true")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except Unreachable as exc:
        print(f"localfaas: {exc}", file=sys.stderr)
        return EXIT_NOT_INVOKED


if __name__ == "__main__":
    sys.exit(main())

"""`localfaas start|invoke|status|deploy` (also `python -m localfaas ...`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from localfaas.cfn import TemplateError

DEFAULT_ENV_FILE = Path("infra/local.env")


def _pairs(values: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        for item in value.split():
            key, sep, val = item.partition("=")
            if not sep:
                raise SystemExit(f"--parameter-overrides expects KEY=VALUE, got {item!r}")
            pairs[key.removeprefix("ParameterKey=")] = val
    return pairs


def _start(args: argparse.Namespace) -> int:
    from localfaas.host import HostConfig

    env_file = args.env_file if args.env_file is not None else (
        DEFAULT_ENV_FILE if DEFAULT_ENV_FILE.exists() else None)
    config = HostConfig(
        template=Path(args.template).resolve(),
        env_file=env_file,
        parameter_overrides=_pairs(args.parameter_overrides),
        host=args.host,
        port=args.port,
        url_port_base=args.url_port_base,
        run_dir=Path(args.run_dir).resolve(),
        default_concurrency=args.concurrency,
        idle_seconds=args.idle_seconds,
        async_retry_seconds=args.async_retry_seconds,
        minute_seconds=args.minute_seconds,
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


def _request(url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=960) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    except urllib.error.URLError as error:
        raise SystemExit(f"localfaas: cannot reach {url}: {error.reason}") from error


def _invoke(args: argparse.Namespace) -> int:
    payload = args.payload
    if payload.startswith("@"):
        payload = Path(payload[1:]).read_text()
    status, headers, body = _request(
        f"{_endpoint(args)}/2015-03-31/functions/{args.name}/invocations", payload.encode())
    print(body.decode("utf-8", "replace"))
    if status != 200 or "X-Amz-Function-Error" in headers:
        print(f"localfaas: status {status} {headers.get('X-Amz-Function-Error', '')}".rstrip(),
              file=sys.stderr)
        return 1
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
    start.add_argument("--parameter-overrides", action="append", default=[], metavar="KEY=VALUE")
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=int(os.environ.get("LOCALFAAS_PORT", 4566)),
                       help="control port (Lambda API); 0 picks free ports for everything")
    start.add_argument("--url-port-base", type=int, default=None,
                       help="first function URL port (default: the ports after the control port)")
    start.add_argument("--run-dir", default=".localfaas", help="logs and state.json go here")
    start.add_argument("--concurrency", type=int, default=32,
                       help="environments per function when ReservedConcurrentExecutions is unset")
    start.add_argument("--idle-seconds", type=float, default=300.0, help="reap environments idle this long")
    start.add_argument("--async-retry-seconds", type=float, default=60.0,
                       help="wait before retrying a failed async invocation (doubled for the second)")
    start.add_argument("--minute-seconds", type=float, default=60.0,
                       help="length of a schedule rate's minute, to shorten rates in development")
    start.set_defaults(run=_start)

    for name, handler, text in (("invoke", _invoke, "invoke a function (RequestResponse)"),
                                ("status", _status, "show functions, environments, mappings"),
                                ("deploy", _deploy, "reload changed code without dropping invocations")):
        command = commands.add_parser(name, help=text)
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
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""Runs the real localfaas host as a subprocess, on free ports, for each test that asks.

The conformance tests (what a handler sees and what Lambda does with its answers) run against
both runtime interface clients: the official awslambdaric and localfaas's lean one. A test or a
module fixture asks for `runtime_client` and starts its host with `client_args(runtime_client)`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskfaas.stack import RunningHost, start_host

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parents[2]
RUNTIME_CLIENTS = ("official", "lean")  # localfaas.environment.RuntimeClient's values
# The module that each client runs, as an environment's command line shows it (python -m ...).
CLIENT_MODULES = {"official": "awslambdaric", "lean": "localfaas.lean_runtime"}


def client_args(runtime_client: str | None) -> list[str]:
    return ["--runtime-client", runtime_client] if runtime_client else []


@pytest.fixture(scope="module", params=RUNTIME_CLIENTS)
def runtime_client(request: pytest.FixtureRequest) -> str:
    """Each runtime interface client in turn (module scope: a module's hosts are shared per client)."""
    return request.param


@pytest.fixture
def localfaas(tmp_path: Path) -> Iterator[Callable[..., RunningHost]]:
    """`localfaas(template, overrides={...}, minute_seconds=..., args=[...], runtime_client=...)`
    starts a host (runtime_client None: the host's default)."""
    hosts: list[RunningHost] = []

    def start(template: Path = FIXTURES / "template.yaml", overrides: dict[str, str] | None = None,
              minute_seconds: float | None = None, args: list[str] | None = None,
              env: dict[str, str] | None = None, runtime_client: str | None = None) -> RunningHost:
        extra = list(args or []) + client_args(runtime_client)
        if minute_seconds is not None:
            extra += ["--minute-seconds", str(minute_seconds)]
        host = start_host(Path(template), tmp_path / f"run{len(hosts)}", overrides, extra, env)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        host.stop()

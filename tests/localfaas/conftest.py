"""Runs the real localfaas host as a subprocess, on free ports, for each test that asks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskfaas.stack import RunningHost, start_host

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parents[2]


@pytest.fixture
def localfaas(tmp_path: Path) -> Iterator[Callable[..., RunningHost]]:
    """`localfaas(template, overrides={...}, minute_seconds=..., args=[...])` starts a host."""
    hosts: list[RunningHost] = []

    def start(template: Path = FIXTURES / "template.yaml", overrides: dict[str, str] | None = None,
              minute_seconds: float | None = None, args: list[str] | None = None,
              env: dict[str, str] | None = None) -> RunningHost:
        extra = list(args or [])
        if minute_seconds is not None:
            extra += ["--minute-seconds", str(minute_seconds)]
        host = start_host(Path(template), tmp_path / f"run{len(hosts)}", overrides, extra, env)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        host.stop()

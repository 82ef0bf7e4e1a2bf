"""Runs the real localfaas host as a subprocess, on free ports, for each test that asks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parents[2]


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class RunningHost:
    def __init__(self, process: subprocess.Popen[bytes], run_dir: Path, console_path: Path) -> None:
        self.process = process
        self.run_dir = run_dir
        self.console_path = console_path
        state = json.loads((run_dir / "state.json").read_text())
        self.endpoint: str = state["endpoint"]
        self.urls: dict[str, str] = state["urls"]
        self.outputs: dict[str, Any] = state["outputs"]
        self.warnings: list[str] = state["warnings"]

    def invoke(self, name: str, payload: Any = None, headers: dict[str, str] | None = None,
               timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps(payload if payload is not None else {}).encode()
        return http("POST", f"{self.endpoint}/2015-03-31/functions/{name}/invocations", body,
                    headers, timeout)

    def status(self) -> dict[str, Any]:
        return json.loads(http("GET", f"{self.endpoint}/_localfaas/status")[2])

    def console(self) -> str:
        return self.console_path.read_text(errors="replace")

    def log(self, name: str) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, name: str, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log(name)
            if text in log:
                return log
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not in the log of {name} after {timeout}s:\n{self.log(name)}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "localfaas", *args, "--endpoint", self.endpoint],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
        return self.process.returncode


def start_host(template: Path, run_dir: Path, overrides: dict[str, str] | None = None,
               extra_args: list[str] | None = None, env: dict[str, str] | None = None,
               timeout: float = 30) -> RunningHost:
    run_dir.mkdir(parents=True, exist_ok=True)
    console_path = run_dir / "console.txt"
    command = [sys.executable, "-m", "localfaas", "start", str(template), "--port", "0",
               "--run-dir", str(run_dir), "--env-file", str(run_dir / "none.env"),
               *(extra_args or [])]
    for key, value in (overrides or {}).items():
        command += ["--parameter-overrides", f"{key}={value}"]
    with open(console_path, "wb") as console:
        process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while not (run_dir / "state.json").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"localfaas did not start:\n{console_path.read_text()}")
        time.sleep(0.05)
    return RunningHost(process, run_dir, console_path)


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

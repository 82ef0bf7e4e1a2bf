"""A running stack (taskfaas/stack.py, a namespace of its own, 2 workers) and the real
`.venv/bin/taskfaas` run against it as a subprocess, with the stack's own credentials."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskfaas.stack import ROOT, Stack, start_stack, stop_stack

TASKFAAS = ROOT / ".venv" / "bin" / "taskfaas"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


CliRunner = Callable[..., Run]


def stack_env(credentials_file: Path) -> dict[str, str]:
    """The test's environment without its AWS_* values, plus the stack's key pair."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for line in credentials_file.read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    return env


def runner(cwd: Path, env: dict[str, str], default_args: list[str]) -> CliRunner:
    def run(*args: str, timeout: float = 60) -> Run:
        done = subprocess.run([str(TASKFAAS), *args, *default_args], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, env=env)
        return Run(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("cli-stack"), workers=2, namespace_prefix="cli")
    yield running
    stop_stack(running)


@pytest.fixture(scope="module")
def cli_env(stack: Stack) -> dict[str, str]:
    return stack_env(stack.host.run_dir.parent / "credentials.env")


@pytest.fixture
def cli(stack: Stack, cli_env: dict[str, str], tmp_path: Path) -> CliRunner:
    """`taskfaas ... --run-dir <the stack's>`, run from a directory of its own."""
    return runner(tmp_path, cli_env, ["--run-dir", str(stack.host.run_dir)])


@pytest.fixture
def bare_cli(cli_env: dict[str, str], tmp_path: Path) -> CliRunner:
    """`taskfaas ...` with only the arguments given (and the stack's credentials)."""
    return runner(tmp_path, cli_env, [])

"""Our whole system started from Python, for the end-to-end tests and the benchmarks: localfaas
running a template as a subprocess on free ports (`start_host`), and the stack of template.yaml, the
worker fleet, RabbitMQ and Redis in a namespace of its own that `stop_stack` removes (`start_stack`).

Every namespace made here (`new_namespace`, also for the tests that need no stack) records its owner,
this process, so that if the run is killed the next one removes what it left (infra/clean_state.py).
The host and the fleet get SIGTERM when this process dies, so that none outlives it.

Why here, in the client package: the tests and the benchmarks both start stacks with it, so it
belongs to neither (tests/ importing bench/ made bench a library; bench/ importing a tests/ package
would make the tests one). localfaas.testing would not do either: this harness starts the worker
fleet and signs with taskcore's Signer, and localfaas knows nothing of tasks. taskfaas/ is the
project's tooling around a running stack (its command-line client): starting one belongs with it.
Like `make run`, it needs the checkout (template.yaml, infra/), which ROOT points at; nothing in
the client imports it, so `taskfaas` the command does not pay for it."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import clean_state
from taskcore.signing import Signer

ROOT = Path(__file__).resolve().parents[1]
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
UNIT_SECONDS = "0.05"  # the tests' default; the benchmarks pass their own
# Keys of `extra_env` with these names are also passed to localfaas as template parameter overrides
# (the functions' settings come from the template); the UPPER_CASE keys reach the fleet.
TEMPLATE_PARAMETERS = ("WorkerTtl", "ResultTtl", "CacheTtl", "TaskUnitSeconds", "MaxBatch", "DispatchMode",
                       "JanitorSchedule", "ProvisionedConcurrency")


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
                                   env={**os.environ, **(env or {})}, preexec_fn=terminated_with_parent)
    deadline = time.monotonic() + timeout
    while not (run_dir / "state.json").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"localfaas did not start:\n{console_path.read_text()}")
        time.sleep(0.05)
    return RunningHost(process, run_dir, console_path)



@dataclass
class Stack:
    namespace: str
    host: RunningHost
    fleet: subprocess.Popen[bytes] | None  # None: started without workers
    fleet_log: Path
    env: dict[str, str]
    signer: Signer  # the stack's own key pair: the supervisor's URL takes signed calls only
    # The services this stack runs on (the shared ones unless start_stack was given others) and the
    # command that reaches the broker's node (cleanup lists the queues with it).
    rabbitmq_url: str = RABBITMQ_URL
    redis_url: str = REDIS_URL
    rabbitmqctl: tuple[str, ...] = field(default=("rabbitmqctl",))

    @property
    def producer(self) -> str:
        return self.host.urls["Producer"]

    @property
    def supervisor(self) -> str:
        return self.host.urls["Supervisor"]

    def produce(self, body: Any) -> tuple[int, Any]:
        status, _, reply = http("POST", self.producer + "produce", json.dumps(body).encode(),
                                {"Content-Type": "application/json"})
        return status, json.loads(reply)

    def get(self, path: str) -> tuple[int, Any]:
        """A signed GET of the supervisor's `path` (with its query): status and decoded JSON."""
        url = self.supervisor + path
        status, _, reply = http("GET", url, headers=self.signer.headers("GET", url))
        return status, json.loads(reply)

    def result(self, task_id: str, wait: float = 0) -> tuple[int, Any]:
        return self.get(f"results/{task_id}" + (f"?wait={wait:g}" if wait else ""))

    def wait_final(self, task_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, record = self.result(task_id, wait=10)
            if status == 200 and record["status"] in ("succeeded", "failed"):
                return record
        raise AssertionError(f"task {task_id} not final after {timeout}s: {self.result(task_id)}")

    def workers(self) -> dict[str, Any]:
        """GET /workers: {"workers": [live...], "dead": [...]}, each with pid and heartbeat_age."""
        return self.get("workers")[1]

    def stats(self) -> dict[str, Any]:
        return self.get("stats")[1]

    def fleet_events(self, event: str) -> list[dict[str, Any]]:
        """Every JSON line of the fleet's log whose event is `event`."""
        lines = self.fleet_log.read_text(errors="replace").splitlines()
        found = []
        for line in lines:
            if line.startswith("{") and f'"{event}"' in line:
                entry = json.loads(line)
                if entry.get("event") == event:
                    found.append(entry)
        return found

    def restart_fleet(self, workers: int) -> None:
        """Starts a new fleet in the same namespace (after the previous one exited), same log."""
        assert self.fleet is None or self.fleet.poll() is not None, "the previous fleet is still running"
        self.fleet = launch_fleet(self.env, workers, self.fleet_log, append=True)

    def executions(self) -> list[dict[str, Any]]:
        """Every task execution the workers logged (one JSON line each)."""
        lines = self.fleet_log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and '"executed"' in line]


def new_namespace(prefix: str, separator: str = ".", rabbitmq_url: str | None = None,
                  redis_url: str | None = None, rabbitmqctl: Sequence[str] = ("rabbitmqctl",)) -> str:
    """A fresh namespace ("e2e1a2b3c4d.") owned by this process (the first one of a run also removes
    those of killed runs, see infra/clean_state.py); `cleanup` removes it."""
    namespace = f"{prefix}{uuid.uuid4().hex[:8]}{separator}"
    clean_state.claim(_services(rabbitmq_url, redis_url, rabbitmqctl), namespace)
    return namespace


def cleanup(namespace: str, rabbitmq_url: str | None = None, redis_url: str | None = None,
            rabbitmqctl: Sequence[str] = ("rabbitmqctl",)) -> None:
    """Removes the namespace's Redis keys, queues and exchanges, its owner's marker last (from the
    shared services unless told otherwise; `rabbitmqctl` is the command that reaches the broker's
    node)."""
    services = _services(rabbitmq_url, redis_url, rabbitmqctl)
    clean_state.remove(services, clean_state.collect(services, namespace))


def _services(rabbitmq_url: str | None, redis_url: str | None,
              rabbitmqctl: Sequence[str]) -> clean_state.Services:
    return clean_state.Services(rabbitmq_url or RABBITMQ_URL, redis_url or REDIS_URL, tuple(rabbitmqctl))


def start_stack(run_dir: Path, workers: int = 4, extra_env: dict[str, str] | None = None,
                concurrency: int = 2, namespace_prefix: str = "e2e", rabbitmq_url: str | None = None,
                redis_url: str | None = None, rabbitmqctl: Sequence[str] = ("rabbitmqctl",)) -> Stack:
    """`rabbitmq_url`/`redis_url`: other services than the shared ones (the fault tests' private
    instances); `rabbitmqctl` then names the command that reaches that broker, for cleanup."""
    rabbitmq_url = rabbitmq_url or RABBITMQ_URL
    redis_url = redis_url or REDIS_URL
    namespace = new_namespace(namespace_prefix, ".", rabbitmq_url, redis_url, rabbitmqctl)
    settings = {"NAMESPACE": namespace, "RABBITMQ_URL": rabbitmq_url, "REDIS_URL": redis_url,
                "TASK_UNIT_SECONDS": UNIT_SECONDS, **(extra_env or {})}
    env = {**os.environ, **settings}
    subprocess.run([sys.executable, "infra/declare_topology.py"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    env_file, signer = stack_credentials(run_dir)
    host = start_host(ROOT / "template.yaml", run_dir / "localfaas",
                      overrides={"Namespace": namespace, "RabbitmqUrl": rabbitmq_url, "RedisUrl": redis_url,
                                 "TaskUnitSeconds": UNIT_SECONDS,
                                 **{k: v for k, v in (extra_env or {}).items() if k in TEMPLATE_PARAMETERS}},
                      extra_args=["--minute-seconds", "1", "--env-file", str(env_file)])
    fleet_log = run_dir / "fleet.log"
    # No workers: the functions alone (tasks are admitted and wait in their queues).
    fleet = launch_fleet(env, workers, fleet_log, concurrency=concurrency) if workers else None
    stack = Stack(namespace, host, fleet, fleet_log, env, signer, rabbitmq_url, redis_url,
                  tuple(rabbitmqctl))
    try:
        deadline = time.monotonic() + 30
        while len(stack.workers()["workers"]) < workers:
            if time.monotonic() > deadline or (fleet is not None and fleet.poll() is not None):
                raise RuntimeError(f"the fleet did not come up:\n{fleet_log.read_text()}")
            time.sleep(0.2)
    except BaseException:
        # Whatever went wrong (a supervisor answering 500 too), the host and the fleet must not outlive it.
        stop_stack(stack)
        raise
    return stack


def eventually(check: Callable[[], Any], timeout: float, what: str | Callable[[], str],
               pause: float = 0.05) -> Any:
    """Polls `check` until it returns something truthy; fails saying `what` (a text, or a function
    giving it when needed) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what if isinstance(what, str) else what()
            raise AssertionError(f"{text}: not after {timeout}s (last: {value!r})")
        time.sleep(pause)


def stack_credentials(run_dir: Path, region: str = "us-east-1") -> tuple[Path, Signer]:
    """A fresh key pair for one stack, in an env file for localfaas (which gives it to the functions,
    as Lambda gives them their role's credentials, and accepts it on AWS_IAM URLs), and a signer
    for the test's own calls."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key, secret = f"AKIDSTACK{secrets.token_hex(6).upper()}", secrets.token_urlsafe(30)
    env_file = run_dir / "credentials.env"
    env_file.write_text(f"AWS_ACCESS_KEY_ID={key}\nAWS_SECRET_ACCESS_KEY={secret}\nAWS_REGION={region}\n")
    return env_file, Signer(key, secret, region)


def launch_fleet(env: dict[str, str], workers: int, fleet_log: Path, append: bool = False,
                 concurrency: int = 2) -> subprocess.Popen[bytes]:
    with open(fleet_log, "ab" if append else "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "worker_fleet", "--workers", str(workers),
                                 "--concurrency", str(concurrency)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=terminated_with_parent)


_PR_SET_PDEATHSIG = 1


def terminated_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies, even by SIGKILL, so
    a killed test or benchmark leaves no host or fleet consuming from a namespace the next run's
    sweep removes. (Linux; the signal comes when the starting thread ends: start stacks from the
    main thread.)"""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_stack(stack: Stack) -> None:
    if stack.fleet is not None and stack.fleet.poll() is None:
        stack.fleet.send_signal(signal.SIGTERM)
        try:
            stack.fleet.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.fleet.kill()
    stack.host.stop()
    cleanup(stack.namespace, stack.rabbitmq_url, stack.redis_url, stack.rabbitmqctl)

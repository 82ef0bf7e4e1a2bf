"""Each function directory is a Chalice project: `chalice local` opens it with the settings of
infra/local.env, as a Chalice user would run it (README, "The functions as Chalice projects")."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values

from taskfaas.stack import Stack, http

ROOT = Path(__file__).parents[2]
CHALICE = Path(sys.executable).parent / "chalice"  # the virtualenv's, .venv/bin/chalice
LOCAL_ENV = dotenv_values(ROOT / "infra" / "local.env", interpolate=False)


class ChaliceLocal:
    """`chalice local` in a function directory, on a free port, in a process group of its own."""

    def __init__(self, function: str, env: dict[str, str], log: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        with open(log, "wb") as out:
            # --no-autoreload: one process, no file watcher; the server is the same.
            self.process = subprocess.Popen(
                [str(CHALICE), "local", "--no-autoreload", "--port", str(self.port)],
                cwd=ROOT / "functions" / function, env={**os.environ, **env}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"chalice local did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)

    def _listening(self) -> bool:
        with socket.socket() as client:
            return client.connect_ex(("127.0.0.1", self.port)) == 0

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, object]]:
        status, _, reply = http("POST", self.url + path, body, {"Content-Type": "application/json"})
        return status, json.loads(reply)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def producer(functions_stack: Stack, tmp_path: Path) -> Iterator[ChaliceLocal]:
    """The producer under chalice local: infra/local.env's settings, the stack's namespace, its
    supervisor's URL and the key pair that URL accepts (localfaas hands it to its functions)."""
    credentials = dotenv_values(functions_stack.host.run_dir.parent / "credentials.env", interpolate=False)
    env = {**LOCAL_ENV, **credentials, "NAMESPACE": functions_stack.namespace,
           "SUPERVISOR_URL": functions_stack.supervisor}
    server = ChaliceLocal("producer", env, tmp_path / "chalice-local.log")
    yield server
    server.stop()


def test_chalice_local_serves_the_producer(producer: ChaliceLocal, functions_stack: Stack) -> None:
    task_id = f"chalice-{uuid.uuid4().hex}"
    status, reply = producer.post("produce", json.dumps(
        {"type": "primes", "payload": {"n": 1000}, "task_id": task_id}).encode())
    assert status == 202, reply
    assert reply["task_id"] == task_id and reply["status"] == "queued"
    assert reply["result_url"] == functions_stack.supervisor + f"results/{task_id}"
    # It went through the stack's supervisor, into the stack's namespace.
    status, record = functions_stack.result(task_id)
    assert status == 200 and record["status"] == "queued" and record["type"] == "primes"

    status, reply = producer.post("produce", b'{"type": "nope"}')
    assert status == 400 and reply["error"]["code"] == "unknown_type"


@pytest.mark.parametrize(("function", "app_name", "lambda_functions", "url_handler"), [
    ("producer", "producer", [], True),
    ("supervisor", "supervisor", ["janitor"], True),
    ("result_handler", "result_handler", ["handle_results"], False),
])
def test_every_function_directory_opens_as_a_chalice_project(
        function: str, app_name: str, lambda_functions: list[str], url_handler: bool) -> None:
    """What `chalice local` (and every chalice command) does first: read .chalice/config.json and
    import app.app. In a child process, each app being a module named `app`."""
    probe = (
        "import json\n"
        "from chalice import Chalice\n"
        "from chalice.cli.factory import CLIFactory\n"
        "config = CLIFactory('.').create_config_obj(chalice_stage_name='dev')\n"
        "import app as module\n"
        "print(json.dumps({'app_name': config.app_name, 'chalice': isinstance(config.chalice_app, Chalice),\n"
        "                  'lambdas': sorted(f.name for f in config.chalice_app.pure_lambda_functions),\n"
        "                  'handler': callable(getattr(module, 'handler', None))}))\n"
    )
    env = {**os.environ, **LOCAL_ENV, "NAMESPACE": f"fn{uuid.uuid4().hex[:8]}.",
           "SUPERVISOR_URL": "http://127.0.0.1:1/"}  # the producer's client connects only when used
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT / "functions" / function, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"app_name": app_name, "chalice": True, "lambdas": lambda_functions,
                     "handler": url_handler}

"""Start and stop a peer: its worker processes and its gunicorn front, each a subprocess with its own
environment, on a fresh queue and Redis key prefix so that concurrent runs never meet.

    handle = start_peer("celery", workers=2, unit_seconds=0.0)   # or "dramatiq"
    ... drive handle.url + "/produce" and handle.url + "/results/{id}" ...
    handle.stop()   # SIGTERM, wait, SIGKILL - only the processes it started - then cleans up

    python -m bench.peers.run celery [--workers 2] [--unit-seconds 0]   # foreground, Ctrl-C stops
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import redis

from bench.peers.celery_app.settings import TASK_OPTIONS, celery_settings
from bench.peers.common import DEFAULT_REDIS_DB, DEFAULT_THREADS, PeerEnv
from bench.peers.dramatiq_app.settings import dramatiq_settings

ROOT = Path(__file__).resolve().parents[2]
PEERS = ("celery", "dramatiq")
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
# The front: gunicorn's threaded worker (gthread), one process per core, threads enough for the load
# generator's clients plus long-polls in flight; keep-alive so clients reuse their connections.
# Request line unlimited (0): GET /results?ids= carries up to 100 ids of up to 128 characters, about
# 13 KB; gunicorn's default of 4094 bytes (8190 at most) answers 414 to that.
GUNICORN: dict[str, Any] = {"worker_class": "gthread", "workers": 2, "threads": 16, "keepalive": 5,
                            "backlog": 2048, "limit_request_line": 0}


@dataclass
class PeerHandle:
    name: str
    url: str
    env: PeerEnv
    log_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopped: bool = False

    def describe(self) -> dict[str, Any]:
        """Versions and every setting, for the benchmark's table."""
        if self.name == "celery":
            throws = [f"{kind.__module__}.{kind.__name__}" for kind in TASK_OPTIONS["throws"]]
            settings = {**celery_settings(self.env), "task_options": {**TASK_OPTIONS, "throws": throws}}
        else:
            settings = dramatiq_settings(self.env)
        return {"peer": self.name, "version": version(self.name), "gunicorn": version("gunicorn"),
                "settings": settings, "front": GUNICORN, "unit_seconds": self.env.unit_seconds,
                "worker_command": _worker_command(self.name, self.env)}

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self, grace: float = 15.0) -> None:
        """Stops the front, then the workers: SIGTERM to each main process, up to `grace` seconds
        for it to end, then SIGKILL to its process group (its own session, so only its children);
        then deletes the peer's queues and Redis keys."""
        if self.stopped:
            return
        self.stopped = True
        for process in reversed(self.processes):
            _terminate(process, grace)
        _delete_queues(self.env.broker_url, _queue_names(self.name, self.env.queue))
        _delete_keys(self.env.redis_url, self.env.key_prefix)
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> PeerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_peer(name: str, workers: int = 2, unit_seconds: float = 0.0, *, threads: int | None = None,
               broker_url: str = DEFAULT_BROKER_URL, redis_url: str | None = None,
               ready_timeout: float = 60.0, confirm: bool = False) -> PeerHandle:
    """Starts the peer `name` ("celery" or "dramatiq") with workers x threads concurrency slots
    (Dramatiq: `workers` processes of `threads` threads; Celery: a prefork pool of workers x threads
    processes) and returns once a task submitted through its front has come back. threads=None is
    the peer's own default: Celery 1 (one process per worker), Dramatiq 8."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; one of {', '.join(PEERS)}")
    token = secrets.token_hex(4)
    env = PeerEnv(broker_url=broker_url, redis_url=redis_url or f"redis://127.0.0.1:6379/{DEFAULT_REDIS_DB[name]}",
                  queue=f"peer-{name}-{token}", key_prefix=f"peer-{name}-{token}:", result_ttl=3600,
                  workers=workers, threads=threads or DEFAULT_THREADS[name], unit_seconds=unit_seconds,
                  confirm=confirm)
    port = _free_port()
    handle = PeerHandle(name, f"http://127.0.0.1:{port}", env, Path(tempfile.mkdtemp(prefix=f"peer-{name}-")))
    atexit.register(handle.stop)
    child_env = {**os.environ, **_env_vars(env), "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        commands = {"worker.log": _worker_command(name, env), "front.log": _gunicorn_command(name, port)}
        for log, command in commands.items():
            handle.processes.append(_spawn(command, child_env, handle.log_dir / log))
        _wait_ready(handle, ready_timeout)
    except BaseException:
        handle.stop()
        raise
    return handle


def _env_vars(env: PeerEnv) -> dict[str, str]:
    return {"PEER_BROKER_URL": env.broker_url, "PEER_REDIS_URL": env.redis_url, "PEER_QUEUE": env.queue,
            "PEER_KEY_PREFIX": env.key_prefix, "PEER_RESULT_TTL": str(env.result_ttl),
            "PEER_WORKERS": str(env.workers), "PEER_THREADS": str(env.threads),
            "PEER_CONFIRM": "1" if env.confirm else "0",
            "TASK_UNIT_SECONDS": repr(env.unit_seconds)}


def _worker_command(name: str, env: PeerEnv) -> list[str]:
    if name == "celery":
        return [sys.executable, "-m", "celery", "-A", "bench.peers.celery_app.app", "worker",
                "--pool", "prefork", "--concurrency", str(env.slots), "--queues", env.queue,
                "--hostname", f"{env.queue}@%h", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "--loglevel", "WARNING"]
    return [sys.executable, "-m", "dramatiq", "bench.peers.dramatiq_app.actors",
            "--processes", str(env.workers), "--threads", str(env.threads), "--queues", env.queue]


def _gunicorn_command(name: str, port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", f"bench.peers.{name}_app.wsgi:application",
            "--bind", f"127.0.0.1:{port}", "--worker-class", GUNICORN["worker_class"],
            "--workers", str(GUNICORN["workers"]), "--threads", str(GUNICORN["threads"]),
            "--keep-alive", str(GUNICORN["keepalive"]), "--backlog", str(GUNICORN["backlog"]),
            "--limit-request-line", str(GUNICORN["limit_request_line"]), "--log-level", "warning"]


def _queue_names(name: str, queue: str) -> list[str]:
    return [queue] if name == "celery" else [queue, f"{queue}.DQ", f"{queue}.XQ"]


def _spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(handle: PeerHandle, timeout: float) -> None:
    """POST /produce until it answers 202, then wait for that task's result: the workers are up."""
    deadline = time.monotonic() + timeout
    body = json.dumps({"type": "hash", "payload": {"data": "ready"}, "complexity": 1}).encode()
    while True:
        for process in handle.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{handle.name}: {process.args[2:4]} exited with {process.returncode}; "
                                   f"log: {_tail(handle.log_dir)}")
        try:
            request = urllib.request.Request(handle.url + "/produce", data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                task_id = json.loads(response.read())["task_id"]
            while time.monotonic() < deadline:
                with urllib.request.urlopen(f"{handle.url}/results/{task_id}?wait=2", timeout=10) as response:
                    if json.loads(response.read())["status"] == "succeeded":
                        return
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    raise TimeoutError(f"{handle.name} not ready within {timeout:g} s; log: {_tail(handle.log_dir)}")


def _tail(log_dir: Path, chars: int = 2000) -> str:
    return " | ".join(f"{path.name}: {path.read_text(errors='replace')[-chars:]}"
                      for path in sorted(log_dir.glob("*.log")))


def _terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        # Not reaped yet, so its pid (= the group id of the session it leads) cannot have been reused:
        # this kills exactly the process we started and its children.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _delete_queues(broker_url: str, queues: list[str]) -> None:
    with contextlib.suppress(Exception):
        connection = pika.BlockingConnection(_pika_parameters(broker_url))
        try:
            for queue in queues:
                channel = connection.channel()
                with contextlib.suppress(pika.exceptions.AMQPError):
                    channel.queue_delete(queue)
                    channel.exchange_delete(queue)
                if channel.is_open:
                    channel.close()
        finally:
            connection.close()


def _pika_parameters(broker_url: str) -> pika.ConnectionParameters:
    """kombu reads "amqp://h:5672//" as vhost "/"; pika wants it spelled %2F."""
    url = urlsplit(broker_url)
    return pika.ConnectionParameters(
        host=url.hostname or "127.0.0.1", port=url.port or 5672, virtual_host=unquote(url.path[1:]) or "/",
        credentials=pika.PlainCredentials(unquote(url.username or "guest"), unquote(url.password or "guest")))


def _delete_keys(redis_url: str, prefix: str) -> None:
    with contextlib.suppress(redis.RedisError), redis.Redis.from_url(redis_url) as client:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a peer in the foreground until Ctrl-C.")
    parser.add_argument("name", choices=PEERS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, help="slots per worker (Dramatiq: threads, default 8; "
                        "Celery: workers x threads prefork processes, default 1)")
    parser.add_argument("--unit-seconds", type=float,
                        default=float(os.environ.get("TASK_UNIT_SECONDS", "1.0")))
    args = parser.parse_args()
    with start_peer(args.name, args.workers, args.unit_seconds, threads=args.threads) as handle:
        print(json.dumps(handle.describe(), indent=2))
        print(f"{args.name} ready at {handle.url} (pids {handle.pids()}, logs {handle.log_dir}); "
              "Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while all(process.poll() is None for process in handle.processes):
                time.sleep(0.5)


if __name__ == "__main__":
    main()

"""bench/cpu.py on the real /proc of processes the tests start: a "host" whose child is a "function
environment" burning CPU, a child that ends between the snapshots, the services found by their port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import cpu

# The "environment": burns `argv[1]` s of CPU when told (a line on stdin), then exits when its stdin
# closes.
BURNER = r"""
import sys, time
sys.stdin.readline()
end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    pass
print("done", flush=True)
sys.stdin.readline()
"""

# The "host": starts the burner (with the environment variables of argv[3:]) and prints its pid; at
# each line on its own stdin: tells the burner to burn; lets it exit, reaps it and says "reaped";
# exits.
HOST = r"""
import os, subprocess, sys
extra = dict(a.split("=", 1) for a in sys.argv[3:])
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env={**os.environ, **extra})
print(child.pid, flush=True)
sys.stdin.readline()
child.stdin.write(b"go\n"); child.stdin.flush()
child.stdout.readline()
sys.stdin.readline()
child.stdin.close(); child.wait()
print("reaped", flush=True)
sys.stdin.readline()
"""


class Tree:
    """A host process with one child that burns `seconds` of CPU when told (with
    AWS_LAMBDA_FUNCTION_NAME set if `function` is given)."""

    def __init__(self, seconds: float, function: str | None) -> None:
        extra = [f"AWS_LAMBDA_FUNCTION_NAME={function}"] if function else []
        self.host = subprocess.Popen([sys.executable, "-c", HOST, BURNER, str(seconds), *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.host.stdout is not None and self.host.stdin is not None
        self.child = int(self.host.stdout.readline())

    def say(self, expect: str | None = None) -> None:
        assert self.host.stdin is not None and self.host.stdout is not None
        self.host.stdin.write("\n")
        self.host.stdin.flush()
        if expect:
            assert self.host.stdout.readline().strip() == expect

    def close(self) -> None:
        self.host.kill()
        self.host.wait()
        if cpu.read(self.child) is not None:
            os.kill(self.child, 9)


@pytest.fixture
def tree() -> Iterator[Tree]:
    made = Tree(0.4, "Producer")
    yield made
    made.close()


def wait_for_cpu(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + 60  # the machine may be busy: CPU, not wall time, is awaited
    while (process := cpu.read(pid)) is not None and process.cpu < seconds:
        assert time.monotonic() < deadline, f"{pid} did not burn {seconds} s of CPU"
        time.sleep(0.02)


def test_a_function_environment_is_counted_per_function(tree: Tree) -> None:
    with cpu.Meter({"host": [tree.host.pid]}) as meter:
        tree.say()  # go: the child burns 0.4 s
        wait_for_cpu(tree.child, 0.4)
    assert meter.functions == {"Producer": 1} and meter.functions_before == {"Producer": 1}
    assert meter.alive == {"function Producer": 1, "host": 1}
    assert 0.35 <= meter.used["function Producer"] <= 0.6
    assert meter.used["host"] < 0.2  # the host only waited
    assert cpu.function_name(tree.child) == "Producer" and cpu.function_name(tree.host.pid) is None


def test_a_child_that_ended_is_counted_through_its_parent() -> None:
    tree = Tree(0.3, None)
    try:
        with cpu.Meter({"host": [tree.host.pid]}) as meter:
            tree.say()
            wait_for_cpu(tree.child, 0.3)
            tree.say("reaped")  # the child exits and the host reaps it: its CPU moves to cutime
        assert meter.alive == {"host": 1}
        assert 0.25 <= meter.used["host (ended children)"] <= 0.5
    finally:
        tree.close()


def test_alone_leaves_the_root_s_children_out(tree: Tree) -> None:
    with cpu.Meter({"generator": [tree.host.pid]}, alone=["generator"]) as meter:
        tree.say()
        wait_for_cpu(tree.child, 0.4)
    assert meter.alive == {"generator": 1} and meter.functions == {}
    assert meter.used["generator"] < 0.2
    # The first root named takes a pid: the child under "env", its parent alone under "generator".
    snap = cpu.snapshot({"env": [tree.child], "generator": [tree.host.pid]})
    assert sorted(kind for kind, _ in snap.processes.values()) == ["function Producer", "generator"]


def test_this_process_s_own_cpu() -> None:
    with cpu.Meter({"me": [os.getpid()]}, alone=["me"]) as meter:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    assert 0.28 <= meter.used["me"] <= 0.5


def test_a_reused_pid_starts_from_zero() -> None:
    def process(start: int, used: float) -> cpu.Process:
        return cpu.Process(pid=10, ppid=1, start=start, comm="x", cpu=used, children_cpu=0.0)

    before = cpu.Snapshot({(10, 100): ("host", process(100, 5.0))})
    after = cpu.Snapshot({(10, 900): ("host", process(900, 0.25))})  # another process on pid 10
    assert cpu.diff(before, after) == {"host": 0.25}
    assert cpu.diff(before, cpu.Snapshot({(10, 100): ("host", process(100, 5.5))})) == {"host": 0.5}


def test_a_service_is_found_by_its_listening_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert cpu.listener(port) == os.getpid()
        assert cpu.service_roots({"mine": port}) == {"mine": [os.getpid()]}
    assert cpu.listener(port) is None
    assert cpu.service_roots({"gone": port}) == {}


def test_the_shared_services_are_found() -> None:
    """RabbitMQ and Redis of the tests (5672, 6379): beam.smp and redis-server."""
    roots = cpu.service_roots()
    names = {kind: Path(f"/proc/{pids[0]}/comm").read_text().strip() for kind, pids in roots.items()}
    assert names == {"rabbitmq": "beam.smp", "redis": "redis-server"}


def test_per_operation_keeps_the_load_generator_apart() -> None:
    used = {"function Producer": 1.0, "localfaas host": 0.5, "load generator": 2.0,
            "load generator (ended children)": 1.0}
    figures = cpu.per_operation(used, 500)
    assert figures["per_kind_ms"] == {"function Producer": 2.0, "localfaas host": 1.0, "load generator": 4.0,
                                      "load generator (ended children)": 2.0}
    assert figures["total_ms"] == 3.0
    assert cpu.per_operation(used, 0) == {"per_kind_ms": {}, "total_ms": None}

"""Private RabbitMQ and Redis instances for the fault tests, which stop, pause and kill them.

Every test gets a redis-server and a RabbitMQ node of its own, on free ports, with their data in the
test's temporary directory, so that breaking them cannot disturb the shared services (or other
stacks using them). Both are torn down whatever happens in the test: the stack first (after the
services were healed, so that its processes can stop cleanly), then the node's and Redis's whole
process groups, by id.

Redis outages are pauses (SIGSTOP ... SIGCONT of the redis-server process) rather than a shutdown
and restart: without persistence (--save "" --appendonly no) a restarted Redis comes back empty,
which would lose every record by construction and test nothing. SIGSTOP rather than
`CLIENT PAUSE`: it freezes the server entirely (accepts, reads, heartbeats, every command),
like a hung or partitioned Redis, and needs no live Redis connection to end it. Either way
clients see timeouts (the task store's socket timeout, 7 s), and commands already sent are run
when the server resumes (checked: CLIENT PAUSE does the same).

RabbitMQ outages kill the node (SIGKILL to its process group) and boot it again on the same ports
and data directory, so durable queues and persistent messages survive, as after a crash.

A broker bug limits when the node may be killed. RabbitMQ 3.10.8 (Debian bookworm's, the one here)
loses a quorum queue that is killed within about a second of its declaration: after the boot it has
no leader (publishes to it are never confirmed, consumers get nothing), and once an election is
triggered by hand it is empty, confirmed messages included. Measured on a private node with six
quorum queues of 10 confirmed messages each, SIGKILL 0.5 s after the last declaration: the last
queue declared came back leaderless every time, and empty after `ra:trigger_election`; killed 1 s,
2 s or 3 s after it, none. A clean stop never does it. (Upstream: rabbitmq-server#10070 reports the
leaderless queue.) So the outage test kills a node whose queues have settled
(QUEUES_SETTLE_SECONDS), as a crash of a broker in service does, and `PrivateRabbitMQ.start` fails
with this diagnosis if a restart leaves a quorum queue without a leader anyway, rather than letting
the test time out on tasks the broker lost. docs/taskcore.md ("A broker bug to know") says the
same for users.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import redis

from taskfaas.ports import free_port
from taskfaas.stack import Stack, start_stack, stop_stack

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # the scripts themselves, not /usr/sbin's su wrappers
BOOT_TIMEOUT = 60.0
# A quorum queue declared less than about a second before a crash may be lost (see above).
QUEUES_SETTLE_SECONDS = 3.0
# Every quorum queue elects a leader in ~0.1-0.3 s after a boot; one still without one after this
# is the broker bug described above.
ELECTION_GRACE = 5.0
# Erlang, run by `rabbitmqctl eval`: the quorum queues without a known leader.
LEADERLESS_QUEUES = (
    "[element(1, amqqueue:get_pid(Q)) || Q <- rabbit_amqqueue:list(), "
    "amqqueue:get_type(Q) =:= rabbit_quorum_queue, "
    "ra_leaderboard:lookup_leader(element(1, amqqueue:get_pid(Q))) =:= undefined].")
# What the tests measured, printed at the end of the run (boot times, tasks in flight and lost).
REPORT: list[str] = []


def _kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signals the process group led by `process` (started with start_new_session) and reaps it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=15)
    # Children that outlived the leader (erl_child_setup, inet_gethost) are in the same group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@dataclass
class PrivateRedis:
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.directory / "redis.log").read_text()
                    raise RuntimeError(f"redis-server did not start: {log}") from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.process is not None and self.paused:
            os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            _kill_group(self.process, signal.SIGTERM)
            self.process = None


@dataclass
class PrivateRabbitMQ:
    directory: Path
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    node: str = field(default_factory=lambda: f"faults{uuid.uuid4().hex[:8]}@localhost")
    process: subprocess.Popen[bytes] | None = None
    boots: list[float] = field(default_factory=list)  # seconds from start to a working connection

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def env(self) -> dict[str, str]:
        base = self.directory
        return {
            **os.environ,
            # The Erlang cookie is created in HOME: the node and our rabbitmqctl share it.
            "HOME": str(base),
            # Not /etc/rabbitmq/rabbitmq-env.conf, which names the shared node.
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    @property
    def rabbitmqctl(self) -> tuple[str, ...]:
        """The command reaching this node (for taskfaas.stack's cleanup too)."""
        return ("env", f"HOME={self.directory}", str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node)

    def start(self, check_leaders: bool = True) -> float:
        """Boots the node (again: same ports, same data) and waits for an AMQP connection; after a
        restart, checks that every quorum queue has a leader unless told not to."""
        base = self.directory
        base.mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq-env.conf").write_text("")
        (base / "enabled_plugins").write_text("[].\n")
        # guest may only connect from localhost (the default), which is where we are.
        (base / "rabbitmq.conf").write_text("loopback_users.guest = true\ndisk_free_limit.absolute = 10MB\n")
        began = time.monotonic()
        with open(base / "console.log", "ab") as console:
            # cwd: where the Erlang VM would write an erl_crash.dump.
            self.process = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], env=self.env, cwd=base,
                                            stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            try:
                pika.BlockingConnection(pika.URLParameters(self.url + "?connection_attempts=1")).close()
                break
            except pika.exceptions.AMQPError:
                if self.process.poll() is not None or time.monotonic() - began > BOOT_TIMEOUT:
                    self.kill()
                    console = (base / "console.log").read_text()
                    raise RuntimeError(f"RabbitMQ did not boot:\n{console}") from None
                time.sleep(0.1)
        took = time.monotonic() - began
        self.boots.append(took)
        if len(self.boots) > 1 and check_leaders:
            self._check_leaders()
        return took

    def leaderless_queues(self) -> list[str]:
        """The quorum queues without a known leader (their Ra cluster names, "%2F_<queue>")."""
        answer = self.ctl("eval", LEADERLESS_QUEUES)
        if answer.returncode != 0:
            raise RuntimeError(f"rabbitmqctl eval failed: {answer.stdout}{answer.stderr}")
        return re.findall(r"'([^']+)'", answer.stdout)

    def _check_leaders(self) -> None:
        """Fails if a quorum queue has no leader ELECTION_GRACE s after the node accepted
        connections again: the broker bug described in the module's docstring."""
        deadline = time.monotonic() + ELECTION_GRACE
        while leaderless := self.leaderless_queues():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"quorum queues without a leader after the restart: {leaderless}. RabbitMQ 3.10 "
                    "loses a quorum queue killed within about a second of its declaration "
                    "(tests/faults/conftest.py's docstring): was the node killed too early?")
            time.sleep(0.5)

    def kill(self) -> None:
        """A crash: SIGKILL to the node and its helpers."""
        if self.process is not None:
            _kill_group(self.process)
            self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.rabbitmqctl, *args], capture_output=True, text=True, timeout=60)

    def connection(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(self.url))

    def depth(self, queue: str) -> int:
        connection = self.connection()
        try:
            return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            connection.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_rabbitmq(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PrivateRabbitMQ]:
    broker = PrivateRabbitMQ(tmp_path / "rabbitmq")
    try:
        broker.start()
        yield broker
    finally:
        broker.kill()
        if broker.boots:
            REPORT.append(f"{request.node.name}: private RabbitMQ boots "
                          f"{', '.join(f'{b:.1f}s' for b in broker.boots)}")


@dataclass
class Faults:
    """The stack under test and the services it runs on."""

    stack: Stack
    rabbitmq: PrivateRabbitMQ
    redis: PrivateRedis


@pytest.fixture
def faults_factory(tmp_path: Path, private_rabbitmq: PrivateRabbitMQ,
                   private_redis: PrivateRedis) -> Iterator[Callable[..., Faults]]:
    """`faults_factory(workers=..., extra_env=...)` starts the stack on the private services; it is
    stopped after the test, with the services healed first (Redis resumed, RabbitMQ booted)."""
    started: list[Stack] = []

    def start(**kwargs: Any) -> Faults:
        stack = start_stack(tmp_path / "stack", namespace_prefix="faults",
                            rabbitmq_url=private_rabbitmq.url, redis_url=private_redis.url,
                            rabbitmqctl=private_rabbitmq.rabbitmqctl, **kwargs)
        started.append(stack)
        return Faults(stack, private_rabbitmq, private_redis)

    yield start
    private_redis.resume()
    with contextlib.suppress(Exception):  # a node that cannot boot again must not stop the teardown
        if not private_rabbitmq.running:
            private_rabbitmq.start()
    for stack in started:
        try:
            stop_stack(stack)
        except Exception as error:  # the services are thrown away anyway; the processes must go
            REPORT.append(f"stop_stack: {error!r}")
        finally:
            for process in (stack.fleet, stack.host.process):
                if process is not None and process.poll() is None:
                    process.kill()  # the fleet's workers die with it (PR_SET_PDEATHSIG)
                    process.wait(timeout=15)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("faults: measurements")
        for line in REPORT:
            terminalreporter.write_line(line)

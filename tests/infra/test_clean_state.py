"""infra/clean_state.py and the owners' markers: a namespace whose owner is gone is swept at the next
claim and listed and removed by `make clean-state`; one whose owner runs, or that is in use, is left
alone. Each test runs on services of its own (a RabbitMQ vhost of the shared broker, a private
redis-server), so that removing "everything idle" there cannot touch another stack's state."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pika
import pika.exceptions
import pytest
import redis

from infra import clean_state
from infra.clean_state import Services
from taskcore.keys import Keys, namespace_of
from taskcore.rabbitmq.amqp import AmqpBroker
from taskcore.settings import Settings
from taskfaas.stack import RABBITMQ_URL, cleanup, eventually

ROOT = Path(__file__).parents[2]


def ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True, timeout=120)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    vhost = f"cleantest-{secrets.token_hex(4)}"
    user = urlsplit(RABBITMQ_URL).username or "guest"
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    redis_url = f"redis://127.0.0.1:{port}/0"
    try:
        eventually(lambda: _pings(redis_url), 10, "the private redis-server answering")
        yield Services(RABBITMQ_URL.rsplit("/", 1)[0] + "/" + quote(vhost, safe=""), redis_url)
    finally:
        server.terminate()
        server.wait(timeout=10)
        ctl("delete_vhost", vhost)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.ConnectionError:
        return False


def populate(services: Services, namespace: str, records: int = 3) -> None:
    """What a stack leaves: its topology with 2 tasks waiting in the shared queue, task records,
    a cached result and counters."""
    # MAX_ATTEMPTS=1: no retries, so no retry delay queues; the five queues the counts below expect.
    settings = Settings(rabbitmq_url=services.rabbitmq_url, namespace=namespace, max_attempts=1)
    with AmqpBroker(settings) as broker:
        broker.declare(["w-0"])
    connection = pika.BlockingConnection(pika.URLParameters(services.rabbitmq_url))
    channel = connection.channel()
    channel.confirm_delivery()
    for _ in range(2):
        channel.basic_publish(Keys(namespace).tasks_exchange, "shared", b"{}")
    connection.close()
    client, names = services.redis(), Keys(namespace)
    for i in range(records):
        client.hset(names.task(f"id{i}"), mapping={"status": "succeeded"})
    client.set(names.result("fp"), "42")
    client.hincrby(names.stats, "succeeded", records)


def state(services: Services) -> dict[str, list[str]]:
    """Every namespace on the services with its keys, queues and exchanges."""
    return {space.name: sorted([*(key.decode() for key in space.keys), *(q.name for q in space.queues),
                                *space.exchanges])
            for space in clean_state.inventory(services)}


def owner_process(services: Services, namespace: str) -> subprocess.Popen[str]:
    """Another process that claims `namespace` and lives on until it is killed."""
    code = ("import sys, time\nfrom infra import clean_state\n"
            f"clean_state.claim(clean_state.Services({services.rabbitmq_url!r}, {services.redis_url!r}), "
            f"{namespace!r})\nprint('claimed', flush=True)\ntime.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "claimed"
    return process


def killed(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


# Names and owners ---------------------------------------------------------------------------------

def test_every_name_keys_makes_tells_its_namespace() -> None:
    for namespace in ("", "t1a2b3c4d:", "e2e1a2b3c4d.", "bench9f."):
        names = Keys(namespace)
        made = [names.task("a.b"), names.result("fp"), names.inflight("fp"), names.followers("fp"),
                names.done("x"), names.workers, names.worker("w-0"), names.rr, names.stats,
                names.throughput(123), names.recent, names.owner, names.tasks_exchange,
                names.results_exchange, names.dead_exchange, names.worker_queue("w-1"),
                names.shared_queue, names.results_queue, names.tasks_dead_queue,
                names.results_dead_queue, names.retry_queue(200),
                # A task id that ends like a fixed name is still a task of the namespace.
                names.task("owner"), names.task("x.stats")]
        assert {name: namespace_of(name) for name in made} == {name: namespace for name in made}
    for foreign in ("peer-celery-1a2b", "celery-task-meta-1", "amq.direct", ""):
        assert namespace_of(foreign) is None


def test_an_owner_is_gone_when_its_process_is_or_the_pid_runs_another_program() -> None:
    me = clean_state.owner_record()
    assert clean_state.owner_state(me) == "alive"
    assert clean_state.owner_state({**me, "proc_start": "1"}) == "gone"  # the pid was reused
    assert clean_state.owner_state({**me, "host": "elsewhere.example"}) == "elsewhere"
    assert clean_state.owner_state(None) == "none"
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                            text=True, check=True)
    assert clean_state.owner_state({**me, "pid": int(exited.stdout)}) == "gone"


# The sweep ----------------------------------------------------------------------------------------

def test_the_first_claim_sweeps_namespaces_whose_owner_was_killed_and_nothing_else(
        services: Services) -> None:
    # Both claim before one is killed: a claim after that would sweep it already.
    dead_owner = owner_process(services, "dead1.")
    live_owner = owner_process(services, "live1.")
    populate(services, "dead1.")
    killed(dead_owner)
    try:
        populate(services, "live1.")
        populate(services, "old1.")  # from before owners were recorded: no marker
        populate(services, "")
        before = state(services)
        assert set(before) == {"dead1.", "live1.", "old1.", ""} and len(before["dead1."]) == 14

        clean_state.claim(services, "mine1.")

        after = state(services)
        assert {ns: names for ns, names in after.items() if ns != "mine1."} == {
            ns: names for ns, names in before.items() if ns != "dead1."}
        marker = json.loads(services.redis().get(Keys("mine1.").owner))
        assert marker["pid"] == os.getpid() and marker["host"] == socket.gethostname()
        # The harness's own removal (stop_stack) takes everything, the marker too.
        populate(services, "mine1.")
        assert len(state(services)["mine1."]) == 14
        cleanup("mine1.", services.rabbitmq_url, services.redis_url)
        assert "mine1." not in state(services)
    finally:
        killed(live_owner)


# make clean-state ---------------------------------------------------------------------------------

def run_clean_state(services: Services, *args: str,
                    answer: str | None = None) -> subprocess.CompletedProcess[str]:
    """The command as `make clean-state` runs it; with `answer`, on a terminal that types it."""
    env = {**os.environ, "RABBITMQ_URL": services.rabbitmq_url, "REDIS_URL": services.redis_url}
    command = [sys.executable, "infra/clean_state.py", *args]
    if answer is None:
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    terminal, typist = os.openpty()
    try:
        os.write(terminal, answer.encode() + b"\n")
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                              stdin=typist)
    finally:
        os.close(terminal)
        os.close(typist)


def test_clean_state_lists_asks_and_removes_only_what_nobody_uses(services: Services) -> None:
    dead_owner = owner_process(services, "dead2.")
    live_owner = owner_process(services, "live2.")
    populate(services, "dead2.", records=5)
    killed(dead_owner)
    consumer = pika.BlockingConnection(pika.URLParameters(services.rabbitmq_url))
    try:
        populate(services, "live2.")
        populate(services, "old2.")
        populate(services, "busy2.")  # no owner recorded, but a consumer on its results queue
        consumer.channel().basic_consume(Keys("busy2.").results_queue, lambda *_: None)
        populate(services, "", records=7)
        everything = state(services)
        assert set(everything) == {"dead2.", "live2.", "old2.", "busy2.", ""}

        listed = run_clean_state(services)  # not on a terminal, no --yes: lists, removes nothing
        assert listed.returncode == 1, listed.stderr
        rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.startswith("  ")}
        assert "remove: its owner, pid" in rows["dead2."] and "is gone" in rows["dead2."]
        assert rows["dead2."].split()[1:5] == ["8", "5", "5", "2"]  # keys, tasks, queues, messages
        assert "keep: its owner, pid" in rows["live2."] and "is running" in rows["live2."]
        assert "remove: no owner recorded, idle" in rows["old2."]
        assert "keep: in use: 1 consumer(s)" in rows["busy2."]
        assert "remove: the default stack's, idle" in rows['""'] and rows['""'].split()[3] == "7"
        assert "would remove 3 namespace(s)" in listed.stdout and "pass --yes" in listed.stdout

        declined = run_clean_state(services, answer="n")
        assert declined.returncode == 0 and "nothing removed" in declined.stdout
        assert state(services) == everything

        confirmed = run_clean_state(services, answer="y")
        assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
        assert "removed 3 namespace(s)" in confirmed.stdout
        assert state(services) == {ns: everything[ns] for ns in ("live2.", "busy2.")}

        again = run_clean_state(services, "--yes")
        assert again.returncode == 0 and "nothing to remove" in again.stdout
    finally:
        consumer.close()
        killed(live_owner)

"""CPU per task of the worker fleet, RabbitMQ and Redis, on a broker and a Redis of this run's own.

    .venv/bin/python bench/broker_cost.py [--tasks 3000] [--batch 100] [--rounds 3]
        [--variant quorum:QUEUE_TYPE=quorum --variant classic:QUEUE_TYPE=classic ...]

The machine is shared: throughput is noise, CPU time per task is not (much). So this boots a
RabbitMQ node and a redis-server of its own on free ports (as tests/faults/conftest.py does; a copy
of that machinery, as bench/ may not import the tests), runs a whole stack on them
(taskfaas.stack.start_stack: localfaas with the three functions, the worker fleet), submits light
`hash` tasks (distinct, so neither cached nor coalesced) through the producer's URL, in batches of
--batch, waits until Redis counts them all final, and divides the utime+stime (from /proc) each
kind of process spent meanwhile by the number of tasks: the broker node's processes (beam.smp and
its helpers), redis-server, the worker processes, the localfaas host and the function environments.

Variants are settings (extra environment of the stack, "name:KEY=VALUE,KEY=VALUE"); each round runs
every variant once, in turn, on a fresh stack and namespace, so that the machine's other load
falls on all of them alike; the table gives each variant's median and range over the rounds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from taskcore.keys import Keys  # noqa: E402
from taskfaas.ports import free_port  # noqa: E402
from taskfaas.stack import Stack, http, start_stack, stop_stack  # noqa: E402

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
HZ = os.sysconf("SC_CLK_TCK")
KINDS = ("rabbitmq", "redis", "workers", "host", "functions")


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=15)


@contextlib.contextmanager
def private_rabbitmq(base: Path) -> Iterator[tuple[str, tuple[str, ...], subprocess.Popen[bytes]]]:
    """A RabbitMQ node of our own: its URL, the rabbitmqctl command reaching it, its process."""
    base.mkdir(parents=True, exist_ok=True)
    port, node = free_port(), f"bench{uuid.uuid4().hex[:8]}@localhost"
    (base / "rabbitmq-env.conf").write_text("")
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text("loopback_users.guest = true\ndisk_free_limit.absolute = 10MB\n")
    env = {**os.environ, "HOME": str(base), "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
           "RABBITMQ_NODENAME": node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
           "RABBITMQ_NODE_PORT": str(port), "RABBITMQ_DIST_PORT": str(free_port()),
           "RABBITMQ_MNESIA_BASE": str(base / "mnesia"), "RABBITMQ_LOG_BASE": str(base / "log"),
           "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"), "ERL_EPMD_ADDRESS": "127.0.0.1"}
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    with open(base / "console.log", "ab") as console:
        process = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], env=env, cwd=base,
                                   stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        began = time.monotonic()
        while True:
            try:
                pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1")).close()
                break
            except pika.exceptions.AMQPError:
                if process.poll() is not None or time.monotonic() - began > 90:
                    raise RuntimeError(f"RabbitMQ did not boot:\n{(base / 'console.log').read_text()}") \
                        from None
                time.sleep(0.2)
        ctl = ("env", f"HOME={base}", str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node)
        yield url, ctl, process
    finally:
        kill_group(process)


@contextlib.contextmanager
def private_redis(base: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(base / "redis.log", "ab") as log:
        process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(base)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.RedisError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url, process
    finally:
        kill_group(process)


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / HZ


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        found.append(parent)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
    return found


def session(sid: int) -> list[int]:
    """Every process of a session (the broker node and its helpers; erl_child_setup starts a session
    of its own, so their descendants are counted too)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                    pids.append(int(entry.name))
    return sorted({child for pid in pids for child in descendants(pid)})


def snapshot(stack: Stack, broker: int, redis_pid: int) -> dict[str, dict[int, float]]:
    """CPU seconds so far per process, by kind (processes that ended since are lost: none should)."""
    assert stack.fleet is not None
    host = stack.host.process.pid
    environments = [pid for pid in descendants(host) if pid != host]
    return {
        "rabbitmq": {pid: cpu_seconds(pid) for pid in session(broker)},
        "redis": {redis_pid: cpu_seconds(redis_pid)},
        "workers": {pid: cpu_seconds(pid) for pid in descendants(stack.fleet.pid)},
        "host": {host: cpu_seconds(host)},
        "functions": {pid: cpu_seconds(pid) for pid in environments},
    }


def spent(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    return {kind: sum(t - before[kind].get(pid, 0.0) for pid, t in after[kind].items()) for kind in KINDS}


def hash_tasks(count: int) -> list[dict[str, object]]:
    """Distinct light tasks: one round of sha256 over a unique string each (no cache hits)."""
    tag = uuid.uuid4().hex[:8]
    return [{"type": "hash", "payload": {"data": f"{tag}-{i}", "rounds": 1}, "complexity": 1}
            for i in range(count)]


def submit(stack: Stack, tasks: list[dict[str, object]], batch: int, clients: int) -> None:
    bodies = [json.dumps({"tasks": tasks[i:i + batch]} if batch > 1 else tasks[i]).encode()
              for i in range(0, len(tasks), batch)]

    def post(body: bytes) -> None:
        for _ in range(20):
            status, _, reply = http("POST", stack.producer + "produce", body,
                                    {"Content-Type": "application/json"})
            if status == 202:
                return
            time.sleep(0.2)  # a 429/503 under load: submit again (distinct tasks, new ids)
        raise RuntimeError(f"submission refused: {status} {reply[:200]!r}")

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, bodies))


def wait_final(client: redis.Redis, keys: Keys, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = sum(int(v or 0) for v in client.hmget(keys.stats, "succeeded", "failed"))
        if done >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {count} tasks final after {timeout}s")
        time.sleep(0.1)


@contextlib.contextmanager
def profiled(stack: Stack, directory: str | None, name: str) -> Iterator[None]:
    """With --py-spy: records one worker process (sampling without pausing it) while the block runs."""
    if directory is None:
        yield
        return
    assert stack.fleet is not None
    worker = next(pid for pid in descendants(stack.fleet.pid) if pid != stack.fleet.pid)
    out = Path(directory).resolve() / f"{name}-worker.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    recorder = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
                                 "--threads", "-r", "200", "-o", str(out), "-p", str(worker)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        recorder.wait(timeout=60)


def run_variant(work: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    with private_rabbitmq(work / "rabbitmq") as (amqp_url, ctl, broker), \
            private_redis(work / "redis") as (redis_url, redis_process):
        extra = {"TASK_UNIT_SECONDS": "0", "TaskUnitSeconds": "0", **env}
        stack = start_stack(work / "stack", workers=args.workers, concurrency=args.concurrency,
                            extra_env=extra, namespace_prefix="bench", rabbitmq_url=amqp_url,
                            redis_url=redis_url, rabbitmqctl=ctl)
        try:
            client = redis.Redis.from_url(redis_url)
            keys = Keys(stack.namespace)
            # Warm-up: every environment and connection the run needs exists before the count starts.
            submit(stack, hash_tasks(args.warmup), args.batch, args.clients)
            wait_final(client, keys, args.warmup, 120)
            before = snapshot(stack, broker.pid, redis_process.pid)
            began = time.monotonic()
            with profiled(stack, args.py_spy, work.name):
                submit(stack, hash_tasks(args.tasks), args.batch, args.clients)
                wait_final(client, keys, args.warmup + args.tasks, 600)
            took = time.monotonic() - began
            used = spent(before, snapshot(stack, broker.pid, redis_process.pid))
        finally:
            stop_stack(stack)
    per_task = {kind: used[kind] / args.tasks * 1000 for kind in KINDS}
    per_task["tasks_per_s"] = args.tasks / took
    return per_task


def direct(args: argparse.Namespace) -> None:
    """The broker alone: per queue type, --direct messages (persistent, ~200 bytes) published in
    confirmed batches of --batch to a durable queue, each batch consumed and acked (prefetch 100)
    before the next; the node's CPU per message, per round, both types in turn on one private node."""
    from taskcore.rabbitmq import OutgoingMessage
    from taskcore.rabbitmq.pika_consumer import ConfirmingChannel, connection_parameters

    types = {"quorum": {"x-queue-type": "quorum", "x-delivery-limit": 5},
             "classic v2": {"x-queue-type": "classic", "x-queue-version": 2}}
    figures: dict[str, list[float]] = {name: [] for name in types}
    body = json.dumps({"task_id": "x" * 36, "payload": {"data": "y" * 150}}).encode()
    with tempfile.TemporaryDirectory(prefix="broker-cost-") as tmp, \
            private_rabbitmq(Path(tmp) / "rabbitmq") as (url, _ctl, broker):
        connection = pika.BlockingConnection(connection_parameters(url, 30))
        confirming = ConfirmingChannel(connection)
        channel = connection.channel()
        channel.basic_qos(prefetch_count=100)
        for round_number in range(args.rounds):
            for name, arguments in types.items():
                queue = f"direct-{uuid.uuid4().hex[:8]}"
                channel.queue_declare(queue, durable=True, arguments=arguments)
                time.sleep(1)  # the declaration's own work is not counted
                pids = session(broker.pid)
                before = sum(cpu_seconds(pid) for pid in pids)
                size = args.batch
                messages = [OutgoingMessage(queue, body, str(i)) for i in range(size)]
                received = 0
                # Streaming, as the stack does: each confirmed batch of 100 is consumed and acked
                # before the next (acks multiple, one per 10 deliveries, as a worker's leave together).
                deliveries = channel.consume(queue, inactivity_timeout=5)
                for _ in range(args.direct // size):
                    outcome: list[object] = [None] * size
                    confirming.publish("", messages, range(size), outcome, 30)  # type: ignore[arg-type]
                    for taken in range(1, size + 1):
                        method, _properties, _body = next(deliveries)
                        if method is None:
                            raise RuntimeError("a confirmed message was not delivered")
                        if taken % 10 == 0 or taken == size:
                            channel.basic_ack(method.delivery_tag, multiple=True)
                    received += size
                channel.cancel()
                used = sum(cpu_seconds(pid) for pid in pids) - before
                figures[name].append(used / received * 1000)
                channel.queue_delete(queue)
                print(f"round {round_number + 1} {name}: {figures[name][-1]:.3f} ms of broker CPU per "
                      f"message ({received} published with confirms, consumed, acked)", flush=True)
        connection.close()
    for name, values in figures.items():
        print(f"{name:<12} {statistics.median(values):.3f} ms/message [{min(values):.3f}-{max(values):.3f}]")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition(":")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100, help="tasks per submission (1: one per request)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent submitters")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--py-spy", metavar="DIR", help="record one worker with py-spy into DIR")
    parser.add_argument("--variant", action="append", default=[],
                        help='"name:KEY=VALUE,..." extra settings of the stack (default: one, as is)')
    parser.add_argument("--direct", type=int, metavar="N",
                        help="the broker alone: N messages through a queue of each type, no stack")
    args = parser.parse_args()
    if args.direct:
        direct(args)
        return 0
    variants = [parse_variant(v) for v in args.variant] or [("default", {})]
    figures: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory(prefix="broker-cost-") as tmp:
        for round_number in range(args.rounds):
            for name, env in variants:
                per_task = run_variant(Path(tmp) / f"{name}-{round_number}", env, args)
                figures[name].append(per_task)
                print(f"round {round_number + 1} {name}: " + "  ".join(
                    f"{kind} {value:.3f}" for kind, value in per_task.items()), flush=True)
    print(f"\nCPU ms per task, median [min-max] over {args.rounds} rounds; {args.tasks} hash tasks in "
          f"batches of {args.batch}, {args.workers} workers x {args.concurrency}, TASK_UNIT_SECONDS=0")
    print(f"{'variant':<14}" + "".join(f"{kind:>22}" for kind in (*KINDS, "tasks_per_s")))
    for name, runs in figures.items():
        cells = []
        for kind in (*KINDS, "tasks_per_s"):
            values = [run[kind] for run in runs]
            cells.append(f"{statistics.median(values):8.3f} [{min(values):.2f}-{max(values):.2f}]")
        print(f"{name:<14}" + "".join(f"{cell:>22}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())

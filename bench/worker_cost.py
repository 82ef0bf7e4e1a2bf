"""CPU per task of one worker process, code trees side by side (A/B in one run).

    .venv/bin/python bench/worker_cost.py [--tasks 2000] [--rate 0] [--rounds 3]
        [--tree base=/tmp/wbase --tree new=.] [--variant name:KEY=VALUE,...]

Each round runs every (tree, variant) in turn, in a fresh namespace on the shared RabbitMQ/Redis: one
worker process (`python -m worker_fleet --worker-id W --concurrency 2`, run from that tree with its
stdout to a file, as a fleet's log is) consumes --tasks light `hash`
tasks (TASK_UNIT_SECONDS=0, admitted in Redis, published to the worker's own queue); --rate 0 publishes
them all at once (a saturated worker), --rate R one at a time R per second (a worker mostly idle between
tasks, as under one task per request). The worker's utime+stime from /proc, from its `connected` line
to the last result in the results queue, divided by the tasks, is the figure; median [range].
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from taskcore.keys import Keys, routing_key_for  # noqa: E402
from taskcore.messages import Task  # noqa: E402
from taskcore.rabbitmq.amqp import AmqpBroker  # noqa: E402
from taskcore.settings import Settings  # noqa: E402
from taskcore.store import TaskStore, now_ms  # noqa: E402
from taskfaas.stack import cleanup, new_namespace  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def thread_split(pid: int) -> tuple[float, float, float, float]:
    """CPU seconds of the main (connection) thread and of all the others, then user and system time."""
    main = others = 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / HZ, int(fields[12]) / HZ
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / HZ
        if int(task.name) == pid:
            main += seconds
        else:
            others += seconds
    return main, others, user, system


def tasks(count: int) -> list[Task]:
    tag = uuid.uuid4().hex[:8]
    return [Task("hash", {"data": f"{tag}-{i}", "rounds": 1}, 1, str(uuid.uuid4()), False,
                 uuid.uuid4().hex, now_ms()) for i in range(count)]


def run_one(tree: Path, env_extra: dict[str, str], args: argparse.Namespace) -> tuple[float, float]:
    namespace = new_namespace("wcost")
    env = {**os.environ, "NAMESPACE": namespace, "TASK_UNIT_SECONDS": "0", **env_extra,
           "PYTHONPATH": str(tree)}
    settings = Settings.from_env(env)
    keys = Keys(namespace)
    worker_id = "w0"
    broker = AmqpBroker(settings)
    store = TaskStore(settings)
    try:
        broker.declare([worker_id])
        work = tasks(args.tasks)
        store.admit(work, now_ms())
        log_path = Path(f"/tmp/worker-cost-{namespace.strip('.')}.log")
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "worker_fleet", "--worker-id", worker_id,
                                        "--concurrency", str(args.concurrency)], cwd=tree, env=env,
                                       stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while b'"connected"' not in log_path.read_bytes():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"worker did not connect: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(0.5)
        spy = None
        if args.py_spy:
            out = Path(args.py_spy).resolve() / f"{namespace.strip('.')}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-f", "raw",
                                    "--threads", "--nonblocking", "-r", "500", "-o", str(out), "-p",
                                    str(process.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        if args.strace:
            spy = subprocess.Popen(["strace", "-c", "-f", "-o", args.strace, "-p", str(process.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        before = cpu_seconds(process.pid)
        split_before = thread_split(process.pid)
        began = time.monotonic()
        route = routing_key_for(worker_id)
        if args.rate <= 0:
            for i in range(0, len(work), 500):
                broker.publish_tasks([(route, t) for t in work[i:i + 500]])
        else:
            for i, task in enumerate(work):
                delay = began + i / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                broker.publish_tasks([(route, task)])
        deadline = time.monotonic() + 300
        while broker.queue_state(keys.results_queue).messages < len(work):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("results missing")
            time.sleep(0.02)
        took = time.monotonic() - began
        used = cpu_seconds(process.pid) - before
        split = [(b - a) / len(work) * 1000
                 for a, b in zip(split_before, thread_split(process.pid), strict=True)]
        print(f"  connection thread {split[0]:.3f} ms/task, other threads {split[1]:.3f}; "
              f"user {split[2]:.3f}, system {split[3]:.3f}", flush=True)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        process.terminate()
        process.wait(30)
        log_path.unlink()
        return used / len(work) * 1000, len(work) / took
    finally:
        broker.close()
        cleanup(namespace)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--py-spy", metavar="DIR", help="record the worker with py-spy into DIR")
    parser.add_argument("--strace", metavar="FILE", help="count the worker's syscalls (strace -c)")
    parser.add_argument("--tree", action="append", default=[], help="name=path of a code tree")
    parser.add_argument("--variant", action="append", default=[], help="name:KEY=VALUE,...")
    args = parser.parse_args()
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree] or [("cwd", ROOT)]
    variants = [(v.partition(":")[0], dict(kv.split("=", 1) for kv in v.partition(":")[2].split(",") if kv))
                for v in args.variant] or [("", {})]
    runs = [(f"{tn}{'/' + vn if vn else ''}", tp, ve) for tn, tp in trees for vn, ve in variants]
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in runs}
    for round_number in range(args.rounds):
        for name, tree, env in runs:
            figure = run_one(tree, env, args)
            figures[name].append(figure)
            print(f"round {round_number + 1} {name}: {figure[0]:.3f} ms/task, {figure[1]:.0f} tasks/s",
                  flush=True)
    print(f"\nworker CPU ms per task, median [min-max] over {args.rounds} rounds ({args.tasks} tasks, "
          f"rate {args.rate or 'all at once'})")
    for name, values in figures.items():
        ms = [v[0] for v in values]
        print(f"{name:<24} {statistics.median(ms):.3f} [{min(ms):.3f}-{max(ms):.3f}]  "
              f"{statistics.median(v[1] for v in values):.0f} tasks/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

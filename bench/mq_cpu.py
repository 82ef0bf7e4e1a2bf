"""Host CPU per message delivered through the MQ event source mapping, A/B in one run.

Starts a localfaas host on tests/localfaas/fixtures/mq_template.yaml (batch 100, window 0, as the
real result handler's mapping) from each source tree given, publishes to a queue of its own with
py-amqp, and reads the host process's utime+stime from /proc before/after (its environments are
other processes and are not counted). Variants alternate within each repeat.

    env $(grep -E '^RABBITMQ_URL=' infra/local.env) .venv/bin/python bench/mq_cpu.py \
        base=/tmp/base-tree new=. [--repeats 3] [--count 2000] [--rate 200]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import amqp

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "tests" / "localfaas" / "fixtures" / "mq_template.yaml"
URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
TICK = os.sysconf("SC_CLK_TCK")


def broker() -> amqp.Connection:
    parts = urlsplit(URL)
    connection = amqp.Connection(host=f"{parts.hostname}:{parts.port or 5672}",
                                 userid=unquote(parts.username or "guest"),
                                 password=unquote(parts.password or "guest"),
                                 virtual_host=unquote(parts.path[1:] or "/"))
    connection.connect()
    return connection


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_split(pid: int) -> tuple[float, float]:
    """(main thread, other threads) CPU seconds of the host."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / TICK
        if int(task.name) == pid:
            main += used
        else:
            other += used
    return main, other


def status(endpoint: str) -> dict:
    with urllib.request.urlopen(f"{endpoint}/_localfaas/status", timeout=10) as response:
        [mapping] = json.loads(response.read())["mappings"]
        return mapping


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class Host:
    def __init__(self, tree: Path, queue: str, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "localfaas", "start", str(TEMPLATE), "--port", "0",
                   "--run-dir", str(run_dir), "--env-file", str(run_dir / "none.env"),
                   "--parameter-overrides", f"Queue={queue}",
                   "--parameter-overrides", "RecordFile=/dev/null",
                   "--parameter-overrides", f"RabbitmqUrl={URL}",
                   "--parameter-overrides", "BatchSize=100",
                   "--parameter-overrides", "Window=0"]
        self.console = open(run_dir / "console.txt", "wb")  # noqa: SIM115
        env = {**os.environ, "RABBITMQ_URL": URL, "PYTHONPATH": str(tree)}
        self.process = subprocess.Popen(command, cwd=tree, env=env, stdout=self.console,
                                        stderr=subprocess.STDOUT)
        wait_for(lambda: (run_dir / "state.json").exists(), 30, "the host")
        self.endpoint = json.loads((run_dir / "state.json").read_text())["endpoint"]
        wait_for(lambda: status(self.endpoint)["connected"], 15, "the mapping")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(15)
        self.console.close()


def publish(channel, queue: str, count: int, rate: float | None, start: int) -> None:
    started = time.monotonic()
    for n in range(count):
        if rate:
            due = started + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        task = f"t-{start + n:08d}"
        body = json.dumps({"task_id": task, "status": "done", "result": "x" * 64}).encode()
        message = amqp.Message(body, content_type="application/json", delivery_mode=2,
                               message_id=task, correlation_id=task,
                               application_headers={"task_id": task, "attempt": 1})
        channel.basic_publish(message, exchange="", routing_key=queue)


def run(tree: Path, count: int, rate: float, work: Path) -> dict[str, float]:
    queue = f"mqbench-{uuid.uuid4().hex[:10]}"
    connection = broker()
    channel = connection.channel()
    channel.queue_declare(queue, durable=False, auto_delete=False)
    host = Host(tree, queue, work / queue)
    figures: dict[str, float] = {}
    try:
        pid = host.process.pid
        sent = 0
        publish(channel, queue, 50, None, sent)  # warm: environment started, code paths hot
        sent += 50
        wait_for(lambda: status(host.endpoint)["acked"] >= sent, 30, "the warm-up")
        time.sleep(0.5)
        before, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(2.0)
        figures["idle_ms_per_s"] = (cpu_seconds(pid) - before) * 1000 / (time.monotonic() - t0)
        for phase, phase_rate in (("steady", rate), ("burst", None)):
            before = cpu_seconds(pid)
            split = thread_split(pid)
            t0 = time.monotonic()
            first = status(host.endpoint)["batches"]
            publish(channel, queue, count, phase_rate, sent)
            sent += count
            wait_for(lambda total=sent: status(host.endpoint)["acked"] >= total, 120, f"the {phase} messages")
            elapsed = time.monotonic() - t0
            used = cpu_seconds(pid) - before
            figures[f"{phase}_us_per_msg"] = used * 1e6 / count
            figures[f"{phase}_idle_adj_us"] = (used - figures["idle_ms_per_s"] / 1000 * elapsed) * 1e6 / count
            after = thread_split(pid)
            figures[f"{phase}_main_us"] = (after[0] - split[0]) * 1e6 / count
            figures[f"{phase}_threads_us"] = (after[1] - split[1]) * 1e6 / count
            figures[f"{phase}_batches"] = status(host.endpoint)["batches"] - first
            figures[f"{phase}_s"] = elapsed
    finally:
        host.stop()
        channel.queue_delete(queue)
        connection.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trees", nargs="+", help="name=path of a source tree")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200)
    args = parser.parse_args()
    trees = [(name, Path(path).resolve()) for name, path in (t.split("=", 1) for t in args.trees)]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory(prefix="mqbench-") as work:
        for repeat in range(args.repeats):
            for name, tree in trees if repeat % 2 == 0 else reversed(trees):
                figures = run(tree, args.count, args.rate, Path(work))
                results[name].append(figures)
                print(name, repeat, {k: round(v, 1) for k, v in figures.items()}, flush=True)
    for name, runs in results.items():
        print(f"\n{name}:")
        for key in runs[0]:
            values = sorted(r[key] for r in runs)
            print(f"  {key:22s} {values[0]:9.1f} .. {values[-1]:9.1f}")


if __name__ == "__main__":
    main()

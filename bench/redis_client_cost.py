"""Client CPU per Redis command of redis-py, against the same command on a raw socket (issue 11).

Needs only redis-py (and hiredis, if wanted) and the standard library, so it runs in throwaway venvs
of other redis-py versions as well as in .venv:

    /tmp/venv-redis-5.2/bin/python bench/redis_client_cost.py [--calls N] [--variants a,b] [--raw]
    python bench/redis_client_cost.py --import-cost [--runs N]

Prints one JSON line: microseconds of process CPU (time.process_time) per call, for each command
and client variant; run it several times and compare only within one run (docs/taskcore.md).
Keys live under a namespace of their own, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# A script with the argument count of MARK_RUNNING that does (almost) nothing: what a registered
# Script call costs the client beyond the command.
TINY_SCRIPT = "return ARGV[1]"
RECORD = {"status": "succeeded", "type": "hash", "complexity": "1", "cache": "miss", "worker_id": "w-0",
          "leader": "", "attempt": "1", "fingerprint": "f" * 64, "submitted_at": "1764000000000",
          "started_at": "1764000000001", "finished_at": "1764000000002", "result": '"' + "a" * 64 + '"',
          "payload": '{"data":"' + "x" * 40 + '"}'}


def variants() -> dict[str, dict[str, Any]]:
    """Client options by name; "ours" is what TaskStore.client_for used before issue 11."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    ours = {"socket_connect_timeout": 5.0, "socket_timeout": 7.0, "health_check_interval": 30}
    return {
        "default": {},
        "ours": ours,
        "no_health": {**ours, "health_check_interval": 0},
        "resp2": {**ours, "protocol": 2},
        "resp3": {**ours, "protocol": 3},
        "no_retry": {**ours, "retry": Retry(NoBackoff(), 0)},
        # The client keeps one connection (behind a lock) instead of taking one from the pool and
        # checking it for unread data at every command.
        "single": {**ours, "single_connection_client": True},
    }


def per_call(fn: Any, calls: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e6


def client_commands(options: dict[str, Any], prefix: str) -> tuple[Any, dict[str, Any]]:
    """A client with these options and the commands to time on it, by name."""
    import redis

    client = redis.Redis.from_url(URL, **options)
    task, lst, plain = prefix + "task", prefix + "done", prefix + "plain"
    client.hset(task, mapping=RECORD)
    client.rpush(lst, "1")
    client.set(plain, "v" * 32)
    script = client.register_script(TINY_SCRIPT)
    sha = script.sha
    args = [prefix, "t", "w-0", 1764000000000, 1, 3600, 30000, 0, 0]
    script(args=args)
    return client, {
        "PING": client.ping,
        "GET": lambda: client.get(plain),
        "HGETALL": lambda: client.hgetall(task),
        # The long-poll's wake-up: the list holds its marker, so BLMOVE returns at once.
        "BLMOVE": lambda: client.blmove(lst, lst, 2.0, "RIGHT", "LEFT"),
        "EVALSHA": lambda: client.evalsha(sha, 0, *args),
        "Script()": lambda: script(args=args),
    }


def raw_commands(prefix: str) -> tuple[Any, dict[str, Any]]:
    """The same commands written and read on a plain socket (hiredis's Reader parses the replies,
    when installed): what any Python client must spend at least."""
    parts = urlsplit(URL)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        import hiredis
        reader: Any = hiredis.Reader()
    except ImportError:
        reader = None

    def encode(*args: Any) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    def call(request: bytes) -> Any:
        sock.sendall(request)
        if reader is None:
            return sock.recv(65536)
        while True:
            reply = reader.gets()
            if reply is not False:
                return reply
            reader.feed(sock.recv(65536))

    if parts.username or parts.password:
        call(encode("AUTH", unquote(parts.username or "default"), unquote(parts.password or "")))
    sha = call(encode("SCRIPT", "LOAD", TINY_SCRIPT))
    args = [prefix, "t", "w-0", 1764000000000, 1, 3600, 30000, 0, 0]
    requests = {"PING": encode("PING"), "GET": encode("GET", prefix + "plain"),
                "HGETALL": encode("HGETALL", prefix + "task"),
                "BLMOVE": encode("BLMOVE", prefix + "done", prefix + "done", "RIGHT", "LEFT", 2.0),
                "EVALSHA": encode("EVALSHA", sha, 0, *args)}
    return sock, {name: (lambda r=request: call(r)) for name, request in requests.items()}


def import_cost(runs: int) -> dict[str, Any]:
    """`import redis` in fresh processes: wall and CPU ms, and whether asyncio came along."""
    code = ("import time,sys;w=time.perf_counter();c=time.process_time();import redis;"
            "print(time.perf_counter()-w,time.process_time()-c,'asyncio' in sys.modules,len(sys.modules))")
    wall, cpu = [], []
    for _ in range(runs):
        line = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        w, c, has_asyncio, modules = line.split()
        wall.append(float(w) * 1000)
        cpu.append(float(c) * 1000)
    return {"wall_ms": [min(wall), max(wall)], "cpu_ms": [min(cpu), max(cpu)],
            "asyncio": has_asyncio == "True", "modules": int(modules)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--variants", default="ours")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--raw", action="store_true", help="also the raw-socket baseline")
    parser.add_argument("--import-cost", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    if opts.import_cost:
        print(json.dumps({"python": sys.executable, **import_cost(opts.runs)}))
        return
    import redis

    table = variants()
    prefix = f"rcost-{uuid.uuid4().hex[:8]}:"
    names = opts.variants.split(",")
    clients = {name: client_commands(table[name], prefix) for name in names}
    if opts.raw:
        clients["raw"] = raw_commands(prefix)
    # Variants take turns, a slice of calls each, so that a burst of load from other processes on
    # this shared machine falls on all of them; the median slice is reported.
    slices: dict[str, dict[str, list[float]]] = {name: {} for name in clients}
    try:
        for _ in range(opts.rounds):
            for name, (_, commands) in clients.items():
                for command, fn in commands.items():
                    slices[name].setdefault(command, []).append(per_call(fn, opts.calls // opts.rounds))
    finally:
        for handle, _ in clients.values():
            handle.close()
        cleaner = redis.Redis.from_url(URL)
        cleaner.delete(prefix + "task", prefix + "done", prefix + "plain")
        cleaner.close()
    report: dict[str, Any] = {"redis": redis.__version__}
    for name, by_command in slices.items():
        report[name] = {command: round(statistics.median(values), 1)
                        for command, values in by_command.items()}
    print(json.dumps(report))

if __name__ == "__main__":
    main()

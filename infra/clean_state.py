"""What stacks left on the shared RabbitMQ and Redis, who owns it, and removing it (`make clean-state`).

Every name a stack uses carries its NAMESPACE prefix (taskcore/keys.py; `namespace_of` tells a
name's namespace). Tests and benchmarks each create a namespace of their own and record its owner
in `<ns>owner` (Keys.owner): JSON {pid, host, started, proc_start}, without a TTL, written before
anything else of the namespace (`claim`) and removed with it. A run that is killed cannot remove
its namespace, so the next run sweeps away every namespace whose owner is gone: no such process on
this host any more (or the pid now runs another program: its start time differs).

`make clean-state` lists, with their keys, queues and messages:
- namespaces whose owner is gone;
- namespaces with no owner recorded (the default stack's, "", which `make run` uses, and what runs
  from before owners were recorded left) when nothing uses them: no consumer on their queues, no
  worker heartbeat in the last LIVE_HEARTBEAT_S;
and removes them once confirmed. A namespace whose owner runs, or that is in use, or whose owner
is on another host, is never touched: another stack on the same services keeps working.

    python infra/clean_state.py [--yes] [--dry-run]

Settings: RABBITMQ_URL and REDIS_URL from the environment, else infra/local.env (the stack's own
users); queues are listed with `rabbitmqctl` (as the machine's administrator), on the URL's vhost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pika  # noqa: E402
import pika.exceptions  # noqa: E402
import redis  # noqa: E402
from dotenv import dotenv_values  # noqa: E402

from taskcore.keys import OWNER, Keys, namespace_of  # noqa: E402

# An unowned namespace with a worker heartbeat this recent is in use (workers beat every 2 s).
LIVE_HEARTBEAT_S = 30.0


@dataclass(frozen=True)
class Services:
    rabbitmq_url: str
    redis_url: str
    rabbitmqctl: tuple[str, ...] = ("rabbitmqctl",)  # the command reaching the broker's node

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Services:
        env = {**dotenv_values(ROOT / "infra" / "local.env", interpolate=False),
               **(os.environ if environ is None else environ)}
        return cls(env["RABBITMQ_URL"], env["REDIS_URL"])

    @property
    def vhost(self) -> str:
        path = urlsplit(self.rabbitmq_url).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=30)

    def describe(self) -> str:
        at = urlsplit(self.redis_url)
        return f"RabbitMQ vhost {self.vhost}, Redis {at.hostname}:{at.port or 6379}{at.path}"


# Owners -------------------------------------------------------------------------------------------

def process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot; /proc/<pid>/stat field 22), None when there
    is no such process or it is a zombie (dead, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after "pid (command)", which may hold spaces
    return None if fields[0] == "Z" else fields[19]


def owner_record() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": round(time.time()),
            "proc_start": process_start(pid)}


def owner_state(owner: dict[str, Any] | None) -> str:
    """"none" (no owner recorded), "alive", "gone" or "elsewhere" (a process of another host)."""
    if not owner:
        return "none"
    if owner.get("host") != socket.gethostname():
        return "elsewhere"
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return "gone"
    started = process_start(pid)
    if started is None or (owner.get("proc_start") is not None and started != owner["proc_start"]):
        return "gone"
    return "alive"


_swept: set[tuple[str, str]] = set()


def claim(services: Services, namespace: str) -> None:
    """Records this process as the namespace's owner. The first claim of a process on these services
    sweeps first (the namespaces of runs that were killed)."""
    if not namespace:
        raise ValueError("the default namespace belongs to `make run`, not to a test or benchmark")
    if (services.redis_url, services.rabbitmq_url) not in _swept:
        _swept.add((services.redis_url, services.rabbitmq_url))
        try:
            for removed in sweep(services):
                print(f"clean_state: removed namespace {removed} (its owner is gone)", file=sys.stderr)
        except (redis.RedisError, pika.exceptions.AMQPError, OSError, RuntimeError) as error:
            # The run can go on without it; `make clean-state` says what is left.
            print(f"clean_state: could not sweep abandoned namespaces: {error!r}", file=sys.stderr)
    client = services.redis()
    try:
        client.set(Keys(namespace).owner, json.dumps(owner_record()))
    finally:
        client.close()


def sweep(services: Services) -> list[str]:
    """Removes every namespace whose owner is gone (never one whose owner runs or is elsewhere);
    returns their names."""
    client = services.redis()
    try:
        # "t1:task:owner" is a task of "t1:", not the marker of a namespace "t1:task:".
        markers = [name for name in client.scan_iter(match=f"*{OWNER}", count=1000)
                   if namespace_of(_text(name)) == _text(name)[:-len(OWNER)]]
        owners = client.mget(markers) if markers else []
    finally:
        client.close()
    removed = []
    for marker, raw in zip(markers, owners, strict=True):
        namespace = marker.decode()[:-len(OWNER)]
        if namespace and owner_state(_json(raw)) == "gone":
            remove(services, collect(services, namespace))
            removed.append(namespace)
    return removed


# What is there ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Queue:
    name: str
    messages: int
    consumers: int


@dataclass
class Namespace:
    name: str
    keys: list[bytes] = field(default_factory=list)  # Redis keys as they are (bytes)
    queues: list[Queue] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)
    owner: dict[str, Any] | None = None
    heartbeat_age: float | None = None  # seconds since the newest worker heartbeat

    @property
    def label(self) -> str:
        return self.name or '"" (default)'

    @property
    def records(self) -> int:
        prefix = Keys(self.name).task("").encode()
        return sum(1 for key in self.keys if key.startswith(prefix))

    @property
    def messages(self) -> int:
        return sum(queue.messages for queue in self.queues)

    def verdict(self) -> tuple[bool, str]:
        """Whether it may be removed, and why (not)."""
        state, owner = owner_state(self.owner), self.owner or {}
        if state == "alive":
            return False, f"its owner, pid {owner['pid']}, is running"
        if state == "elsewhere":
            return False, f"its owner is on host {owner.get('host')}"
        if state == "gone":
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(owner.get("started") or 0))
            return True, f"its owner, pid {owner.get('pid')} (from {since}), is gone"
        consumers = sum(queue.consumers for queue in self.queues)
        running = "" if self.name else " (stop `make run` first)"
        if consumers:
            return False, f"in use: {consumers} consumer(s) on its queues{running}"
        if self.heartbeat_age is not None and self.heartbeat_age < LIVE_HEARTBEAT_S:
            return False, f"in use: a worker beat {self.heartbeat_age:.0f} s ago{running}"
        return True, "the default stack's, idle" if not self.name else "no owner recorded, idle"


def _rabbitmqctl(services: Services, *args: str) -> list[dict[str, Any]]:
    command = [*services.rabbitmqctl, "-q", *args, "-p", services.vhost, "--formatter", "json"]
    # Not our stdin: the Erlang CLI reads it, and would take the answer typed to our question.
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[:300]}"
                           " (rabbitmqctl needs the machine's administrator)")
    return json.loads(done.stdout or "[]")


def list_queue_names(services: Services) -> list[str]:
    return [row["name"] for row in _rabbitmqctl(services, "list_queues", "name")]


def list_queues(services: Services) -> list[Queue]:
    """The vhost's queues with their messages and consumers as they are now: counted by passive
    declares, as rabbitmqctl's figures for quorum queues lag by the stats interval (5 s: a consumer
    that just came is not there yet). A queue deleted meanwhile is left out."""
    queues = []
    connection = pika.BlockingConnection(pika.URLParameters(services.rabbitmq_url))
    try:
        channel = connection.channel()
        for name in list_queue_names(services):
            try:
                declared = channel.queue_declare(name, passive=True).method
            except pika.exceptions.ChannelClosedByBroker:  # 404: gone since it was listed
                channel = connection.channel()
                continue
            queues.append(Queue(name, declared.message_count, declared.consumer_count))
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()
    return queues


def list_exchanges(services: Services) -> list[str]:
    """The vhost's exchanges but the broker's own (the default one and amq.*)."""
    names = (row["name"] for row in _rabbitmqctl(services, "list_exchanges", "name"))
    return [name for name in names if name and not name.startswith("amq.")]


def inventory(services: Services) -> list[Namespace]:
    """Every namespace with something on the services, the default one first. A name that Keys does
    not make (a test's own queue) goes with the longest namespace it starts with, if any."""
    client = services.redis()
    try:
        keys = list(client.scan_iter(count=1000))
        found: dict[str, Namespace] = {}
        strays: list[tuple[str, Any, str]] = []
        named = [(_text(key), key, "keys") for key in keys]
        named += [(queue.name, queue, "queues") for queue in list_queues(services)]
        named += [(name, name, "exchanges") for name in list_exchanges(services)]
        for text, item, kind in named:
            namespace = namespace_of(text)
            if namespace is None:
                strays.append((text, item, kind))
            else:
                getattr(found.setdefault(namespace, Namespace(namespace)), kind).append(item)
        for text, item, kind in strays:
            owners = [name for name in found if name and text.startswith(name)]
            if owners:
                getattr(found[max(owners, key=len)], kind).append(item)
        for space in found.values():
            names = Keys(space.name)
            if names.owner.encode() in space.keys:
                space.owner = _json(client.get(names.owner))
            if names.workers.encode() in space.keys:
                newest = client.zrevrange(names.workers, 0, 0, withscores=True)
                if newest:
                    space.heartbeat_age = max(0.0, time.time() - newest[0][1] / 1000)
    finally:
        client.close()
    return sorted(found.values(), key=lambda space: (space.name != "", space.name))


def collect(services: Services, namespace: str) -> Namespace:
    """One namespace's names, for removal: everything starting with its prefix, but what belongs to
    another namespace nested in it; for the default namespace, only the names Keys makes. Its
    exchanges are the ones Keys names (deleting one that is not there is no error)."""
    def ours(name: str) -> bool:
        if not name.startswith(namespace):
            return False
        owner = namespace_of(name)
        return owner == namespace if not namespace else owner is None or owner == namespace

    space = Namespace(namespace)
    client = services.redis()
    try:
        pattern = _glob_escape(namespace) + "*"
        space.keys = [key for key in client.scan_iter(match=pattern, count=1000) if ours(_text(key))]
        space.owner = _json(client.get(Keys(namespace).owner))
    finally:
        client.close()
    names = Keys(namespace)
    space.exchanges = [names.tasks_exchange, names.results_exchange, names.dead_exchange]
    try:
        space.queues = [Queue(name, 0, 0) for name in list_queue_names(services) if ours(name)]
    except (RuntimeError, OSError, ValueError):
        # No rabbitmqctl here: the queues every namespace has, at least.
        space.queues = [Queue(name, 0, 0) for name in (names.shared_queue, names.results_queue,
                                                       names.tasks_dead_queue, names.results_dead_queue)]
    return space


def remove(services: Services, space: Namespace) -> None:
    """Deletes the namespace's queues and exchanges, then its Redis keys, the owner's marker last,
    so that a removal cut short is still the owner's (and the next sweep's) business."""
    if space.queues or space.exchanges:
        connection = pika.BlockingConnection(pika.URLParameters(services.rabbitmq_url))
        try:
            channel = connection.channel()
            for queue in space.queues:
                channel.queue_delete(queue.name)
            for exchange in space.exchanges:
                channel.exchange_delete(exchange)
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()
    marker = Keys(space.name).owner.encode()
    client = services.redis()
    try:
        for chunk in _chunks([key for key in space.keys if key != marker], 1000):
            client.delete(*chunk)
        client.delete(marker)
    finally:
        client.close()


# The command --------------------------------------------------------------------------------------

def table(spaces: Sequence[Namespace]) -> list[str]:
    lines = [f"  {'namespace':<20}{'keys':>9}{'tasks':>9}{'queues':>8}{'messages':>10}  "]
    for space in spaces:
        removable, why = space.verdict()
        lines.append(f"  {space.label:<20}{len(space.keys):>9,}{space.records:>9,}{len(space.queues):>8,}"
                     f"{space.messages:>10,}  {'remove' if removable else 'keep'}: {why}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--yes", "-y", action="store_true", help="remove without asking")
    parser.add_argument("--dry-run", action="store_true", help="list only")
    args = parser.parse_args(argv)
    services = Services.from_env()
    try:
        spaces = inventory(services)
    except (redis.RedisError, RuntimeError, OSError, ValueError) as error:
        print(f"clean-state: cannot list what is on the services: {error}", file=sys.stderr)
        return 2
    print(f"clean-state: {services.describe()}")
    if not spaces:
        print("  nothing there")
        return 0
    print("\n".join(table(spaces)))
    doomed = [space for space in spaces if space.verdict()[0]]
    if not doomed:
        print("nothing to remove")
        return 0
    what = (f"{len(doomed)} namespace(s): {sum(len(s.keys) for s in doomed):,} keys, "
            f"{sum(len(s.queues) for s in doomed):,} queues ({sum(s.messages for s in doomed):,} messages), "
            f"{sum(len(s.exchanges) for s in doomed):,} exchanges")
    if args.dry_run:
        print(f"would remove {what}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"would remove {what}; not asked on a terminal, so nothing removed (pass --yes)")
            return 1
        if input(f"Remove {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 0  # the answer asked for, not a failure (make would say "Error 1")
    for space in doomed:
        remove(services, space)
    print(f"removed {what}")
    return 0


def _json(raw: bytes | None) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _text(key: bytes) -> str:
    return key.decode(errors="replace")


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


def _chunks(items: list[bytes], size: int) -> Iterable[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


if __name__ == "__main__":
    sys.exit(main())

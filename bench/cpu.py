"""CPU time per process kind, from /proc: snapshot before a run, snapshot after, diff, group.

A process's CPU is utime + stime of /proc/<pid>/stat (all its threads). The processes measured are
the trees of the roots a benchmark names (the localfaas host, the worker fleet, a peer's processes,
the load generator) plus the shared services, found by the port they listen on (RabbitMQ's beam.smp
on 5672, redis-server on 6379: other brokers run on this machine too, the fault tests' private
ones), each with its descendants. In a tree, a process whose environment holds AWS_LAMBDA_FUNCTION_NAME is a
function environment, grouped per function ("function Producer"): how Lambda tells them apart.

What a diff cannot see, and how it is covered:
- a process that ended between the snapshots: its parent's cutime + cstime grows by what it used
  once it is reaped, counted as "<kind> (ended children)" (a child not yet reaped is lost);
- a pid reused between the snapshots: processes are keyed by pid and start time, so a new process
  on an old pid starts from zero.
RabbitMQ and Redis are shared by every stack on the machine: their figures include other users'
load, which is why benchmarks report them apart and repeat runs.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
HZ = os.sysconf("SC_CLK_TCK")
FUNCTION_VARIABLE = b"AWS_LAMBDA_FUNCTION_NAME="
# The shared services: the kind each is counted under, and the port it listens on.
SERVICES = {"rabbitmq": 5672, "redis": 6379}
FUNCTION_PREFIX = "function "


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    ppid: int
    start: int  # clock ticks after boot: with the pid, tells a reused pid from the process it had
    comm: str
    cpu: float  # seconds, utime + stime
    children_cpu: float  # seconds, cutime + cstime: what its reaped children used


@dataclass
class Snapshot:
    """Every measured process, keyed by (pid, start), with the kind it counts under."""

    processes: dict[tuple[int, int], tuple[str, Process]] = field(default_factory=dict)

    def kinds(self) -> Counter[str]:
        """Processes alive per kind (function environments per function)."""
        return Counter(kind for kind, _ in self.processes.values())

    def functions(self) -> dict[str, int]:
        """Function environments alive, per function name."""
        return {kind[len(FUNCTION_PREFIX):]: count for kind, count in sorted(self.kinds().items())
                if kind.startswith(FUNCTION_PREFIX)}


def read(pid: int) -> Process | None:
    """The process's stat line, or None if it is gone (or unreadable)."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces or parentheses: split after the last ')'.
    head, _, rest = raw.rpartition(b")")
    fields = rest.split()
    comm = head.partition(b"(")[2].decode(errors="replace")
    # Fields from the 3rd of stat(5) on: state ppid ... utime(14) stime(15) cutime(16) cstime(17) ...
    # starttime(22); fields[0] is the 3rd.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return Process(pid, int(fields[1]), int(fields[19]), comm, (utime + stime) / HZ, (cutime + cstime) / HZ)


def function_name(pid: int) -> str | None:
    """AWS_LAMBDA_FUNCTION_NAME from the process's environment (as it was at exec), if set."""
    try:
        environ = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(FUNCTION_VARIABLE):
            return entry[len(FUNCTION_VARIABLE):].decode(errors="replace")
    return None


def all_processes() -> dict[int, Process]:
    found = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (process := read(int(entry.name))) is not None:
            found[process.pid] = process
    return found


def listener(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1/::1/any `port` over TCP, if this process may
    see its sockets (root, or the same user)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is the 10th field.
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


def service_roots(ports: Mapping[str, int] = SERVICES) -> dict[str, list[int]]:
    """Roots for the services listening on `ports` (kind -> port); a service not found is left out."""
    return {kind: [pid] for kind, port in ports.items() if (pid := listener(port)) is not None}


def snapshot(roots: Mapping[str, Iterable[int]], alone: Iterable[str] = ()) -> Snapshot:
    """The processes of each root's tree, counted under the root's kind (function environments
    under "function <name>", with their own children); the roots of the kinds `alone` without their
    descendants (the load generator, which also started the systems measured). A pid under two
    roots counts once, under the first root named."""
    alone = set(alone)
    table = all_processes()
    children: dict[int, list[int]] = {}
    for process in table.values():
        children.setdefault(process.ppid, []).append(process.pid)
    tops = [(kind, pid) for kind, pids in roots.items() for pid in pids]
    result = Snapshot()
    seen: set[int] = set()
    for kind, top in tops:
        stack = [(kind, top)]
        while stack:
            current_kind, pid = stack.pop()
            process = table.get(pid)
            if process is None or pid in seen:
                continue
            seen.add(pid)
            if not current_kind.startswith(FUNCTION_PREFIX) and (name := function_name(pid)) is not None:
                current_kind = FUNCTION_PREFIX + name
            result.processes[(pid, process.start)] = (current_kind, process)
            if current_kind not in alone:
                stack += [(current_kind, child) for child in children.get(pid, [])]
    return result


def diff(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds used between the snapshots, per kind: each process alive at the end, less what it
    had used at the start (nothing if it started since); plus what ended children used, as
    "<parent's kind> (ended children)"."""
    used: Counter[str] = Counter()
    for key, (kind, process) in after.processes.items():
        earlier = before.processes.get(key)
        start_cpu, start_children = (earlier[1].cpu, earlier[1].children_cpu) if earlier else (0.0, None)
        used[kind] += max(0.0, process.cpu - start_cpu)
        # A new process's cutime counts children that ended since it started: all in the window.
        ended = process.children_cpu - (start_children if start_children is not None else 0.0)
        if ended > 0:
            used[f"{kind} (ended children)"] += ended
    return {kind: round(seconds, 3) for kind, seconds in sorted(used.items())}


class Meter:
    """Snapshot on entry, diff on exit: `with Meter(roots) as meter: ...` then meter.used (seconds
    per kind), meter.alive (processes per kind at the end), meter.functions and
    meter.functions_before (environments per function at the end and at the start) and
    meter.seconds (wall time)."""

    def __init__(self, roots: Mapping[str, Iterable[int]], alone: Iterable[str] = ()) -> None:
        self.roots = {kind: list(pids) for kind, pids in roots.items()}
        self.alone = tuple(alone)
        self.used: dict[str, float] = {}
        self.alive: dict[str, int] = {}
        self.functions: dict[str, int] = {}
        self.functions_before: dict[str, int] = {}
        self.seconds = 0.0

    def __enter__(self) -> Meter:
        self.started = time.monotonic()
        self.before = snapshot(self.roots, self.alone)
        self.functions_before = self.before.functions()
        return self

    def __exit__(self, *exc: object) -> None:
        after = snapshot(self.roots, self.alone)
        self.seconds = round(time.monotonic() - self.started, 3)
        self.used = diff(self.before, after)
        self.alive = dict(sorted(after.kinds().items()))
        self.functions = after.functions()


def per_operation(used: Mapping[str, float], operations: int, apart: Iterable[str] = ("load generator",),
                  ) -> dict[str, object]:
    """ms of CPU per operation for each kind, and "total_ms" over all but the kinds `apart` (and
    their ended children): the load generator is measured, not counted with the system."""
    apart = tuple(apart)
    if not operations:
        return {"per_kind_ms": {}, "total_ms": None}
    per = {kind: round(seconds * 1000 / operations, 3) for kind, seconds in used.items()}
    counted = sum(seconds for kind, seconds in used.items() if not kind.startswith(apart))
    return {"per_kind_ms": per, "total_ms": round(counted * 1000 / operations, 3)}

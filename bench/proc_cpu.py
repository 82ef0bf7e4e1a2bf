"""CPU time of a process and of its children, from /proc (utime + stime), for per-operation
figures: on a shared machine, CPU per operation holds where throughput is noise."""

from __future__ import annotations

import os

HZ = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []  # gone meanwhile


def cpu_seconds(pid: int | str) -> float:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / HZ if fields else 0.0


def process_and_children(pid: int) -> tuple[float, float]:
    """CPU seconds so far of `pid` and, summed, of its live children. A child that exits takes its
    share with it (until reaped, into the parent's cutime, not counted): measure while they live."""
    children = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(entry)) and int(fields[1]) == pid:
            children += (int(fields[11]) + int(fields[12])) / HZ
    return cpu_seconds(pid), children


class CpuMeter:
    """What a process (a localfaas host) and its children (its environments) spent between the
    start and the end of a `with`, per operation."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.host_s = self.children_s = 0.0

    def start(self) -> CpuMeter:
        self._before = process_and_children(self.pid)
        return self

    def stop(self) -> None:
        after = process_and_children(self.pid)
        self.host_s, self.children_s = after[0] - self._before[0], after[1] - self._before[1]

    def __enter__(self) -> CpuMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def per(self, operations: int) -> dict[str, float]:
        """Milliseconds per operation: the host's, the runtimes' and both."""
        scale = 1000 / max(operations, 1)
        return {"host_ms": self.host_s * scale, "runtime_ms": self.children_s * scale,
                "total_ms": (self.host_s + self.children_s) * scale, "operations": operations}

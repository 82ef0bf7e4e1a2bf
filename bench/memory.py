"""Memory figures for the benchmark: resident memory of process trees (read from /proc) and what
Redis holds for a namespace."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import redis

MB = 1024 * 1024


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # The command may hold spaces and parentheses: the fields after the last ")" are fixed.
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(roots: Iterable[int]) -> list[int]:
    """The given processes and all their descendants."""
    children = _children()
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def snapshot(roots: Iterable[int], client: redis.Redis) -> dict[str, Any]:
    pids = tree(roots)
    info = client.info("memory")
    return {"stack_rss_mb": round(sum(rss_bytes(pid) for pid in pids) / MB, 1), "processes": len(pids),
            "redis_used_mb": round(int(info["used_memory"]) / MB, 1)}


def keys_without_ttl(client: redis.Redis, namespace: str) -> list[str]:
    """Keys of the namespace that never expire (their names without the namespace): the ones Redis
    memory is not bounded for by the TTLs."""
    names = list(client.scan_iter(match=f"{namespace}*", count=1000))
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.ttl(name)
        ttls = pipe.execute()
    return sorted(name.decode()[len(namespace):] for name, ttl in zip(names, ttls, strict=True) if ttl == -1)

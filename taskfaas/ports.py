"""Free TCP ports for the private brokers and Redis servers that fault tests and benchmarks boot."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port outside the kernel's ephemeral range. A port picked by bind(0) is an ephemeral
    one, which any client's outgoing connection may take as its source port while the node is down,
    and the node could not bind it again on restart (seen: "could not bind to distribution port")."""
    low, high = _ephemeral_range()
    candidates = [port for port in range(20000, 32000) if not low <= port <= high] or \
        list(range(high + 1, 65535))
    for _ in range(200):
        port = random.choice(candidates)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")

"""The parent process: keeps N worker processes alive under stable ids.

Slot i always runs worker f"{prefix}-{i}", so a restarted slot consumes its own queue again and picks up
what its predecessor left unacked. A worker that dies is restarted after a backoff that grows while it
keeps dying and resets once it has run for a while. SIGTERM/SIGINT are forwarded to the workers, which
finish their tasks in hand; one still running after its grace period (plus a margin) is SIGKILLed.
Workers are started with PR_SET_PDEATHSIG, so they die with the parent even if it is SIGKILLed:
a worker must not go on holding tasks with nobody to restart it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from taskcore.backoff import RECONNECT, Streak
from worker_fleet.logs import log

# The fleet's size and each worker's concurrency when `python -m worker_fleet` is given none, which
# is what `make run` starts unless WORKERS/CONCURRENCY are set (docs/worker_fleet.md states them).
DEFAULT_WORKERS = 4
DEFAULT_CONCURRENCY = 2
# A worker that ran this long before dying is restarted at once again next time (backoff reset).
STABLE_SECONDS = 30.0
# Beyond the workers' own grace period, before the parent SIGKILLs them.
KILL_MARGIN_SECONDS = 5.0
POLL_SECONDS = 0.1

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def default_id_prefix() -> str:
    """The short host name, reduced to characters that are safe in queue names and routing keys."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname().split(".")[0]).strip("-")
    return name or "worker"


def worker_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{index}" for index in range(count)]


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before prctl took effect; then nobody would ever send the signal.
    if os.getppid() != parent_pid:
        os._exit(1)


@dataclass(eq=False)
class Slot:
    worker_id: str
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float | None = None
    # Restarts of a worker that keeps dying back off as reconnections do.
    backoff: Streak = field(default_factory=RECONNECT.streak)


class Fleet:
    def __init__(self, workers: int, concurrency: int, id_prefix: str, grace: float) -> None:
        self.concurrency = concurrency
        self.grace = grace
        self.slots = [Slot(worker_id) for worker_id in worker_ids(id_prefix, workers)]
        self._stopping = threading.Event()

    def stop(self, *_args: object) -> None:
        self._stopping.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log("fleet_started", pid=os.getpid(), workers=[slot.worker_id for slot in self.slots],
            concurrency=self.concurrency)
        for slot in self.slots:
            self._spawn(slot)
        while not self._stopping.wait(POLL_SECONDS):
            for slot in self.slots:
                self._watch(slot)
        self._shutdown()
        log("fleet_stopped", pid=os.getpid())
        return 0

    def _command(self, slot: Slot) -> list[str]:
        return [sys.executable, "-m", "worker_fleet", "--worker-id", slot.worker_id,
                "--concurrency", str(self.concurrency), "--grace", str(self.grace)]

    def _spawn(self, slot: Slot) -> None:
        # The workers inherit stdout/stderr and the environment (settings) of the parent.
        parent = os.getpid()
        slot.process = subprocess.Popen(self._command(slot), preexec_fn=lambda: _die_with_parent(parent))
        slot.started = time.monotonic()
        slot.restart_at = None
        log("worker_spawned", worker_id=slot.worker_id, pid=slot.process.pid)

    def _watch(self, slot: Slot) -> None:
        now = time.monotonic()
        if slot.process is not None:
            code = slot.process.poll()
            if code is None:
                return
            if now - slot.started >= STABLE_SECONDS:
                slot.backoff.reset()
            delay = slot.backoff.next()
            log("worker_exited", worker_id=slot.worker_id, pid=slot.process.pid, code=code,
                restart_in=round(delay, 2))
            slot.process = None
            slot.restart_at = now + delay
        if slot.restart_at is not None and now >= slot.restart_at:
            self._spawn(slot)

    def _shutdown(self) -> None:
        running = [slot.process for slot in self.slots if slot.process is not None]
        log("fleet_stopping", workers=len(running), grace=self.grace)
        for process in running:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace + KILL_MARGIN_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log("worker_killed", pid=process.pid, reason="grace period over")
                _signal(process, signal.SIGKILL)
                process.wait()


def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)

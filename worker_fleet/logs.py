"""Structured logging: one JSON object per line on stdout.

Every executed attempt logs an `executed` line (task_id, fingerprint, attempt, worker_id, status), so a
test or an operator can count what the workers really ran without any extra Redis key.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from typing import Any

_lock = threading.Lock()


def log(event: str, **fields: Any) -> None:
    """Writes {"ts", "event", **fields} as one line; safe from any thread."""
    line = json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str,
                      separators=(",", ":"))
    # One write per line under a lock: lines from the pool threads never interleave. A closed stdout
    # (the reader went away) must not take the worker down with it.
    with _lock, contextlib.suppress(OSError, ValueError):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

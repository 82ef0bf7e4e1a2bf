"""The registered task types: the one place that says which types exist, what payload each accepts,
and which computation runs it.

Validators return the payload *normalised* (defaults filled in, integral floats made ints), so that
{"data": "x"} and {"data": "x", "rounds": 1} share one fingerprint and one cache entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskcore import work

MAX_PRIMES_N = 5_000_000
MAX_HASH_DATA_CHARS = 65_536  # characters, so that docs/openapi.yaml can say it (maxLength)
MAX_HASH_ROUNDS = 100_000
MAX_SLEEP_SECONDS = 600
MAX_FAIL_MESSAGE = 1_000
DEFAULT_FAIL_MESSAGE = "task failed as requested"


class PayloadError(ValueError):
    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


@dataclass(frozen=True)
class TaskType:
    name: str
    validate: Callable[[dict[str, Any]], dict[str, Any]]
    run: Callable[[dict[str, Any]], Any]


def _only(payload: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(payload) - allowed)
    if extra:
        raise PayloadError(f"unknown payload field(s): {', '.join(extra)}",
                           {"unknown": extra, "allowed": sorted(allowed)})


def _int(payload: dict[str, Any], name: str, low: int, high: int, default: int | None = None) -> int:
    if name not in payload:
        if default is None:
            raise PayloadError(f"payload.{name} is required", {"field": name})
        return default
    value = payload[name]
    # bool is an int subclass in Python; true is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"payload.{name} must be an integer", {"field": name})
    if not low <= value <= high:
        raise PayloadError(f"payload.{name} must be between {low} and {high}",
                           {"field": name, "min": low, "max": high})
    return value


def _primes(payload: dict[str, Any]) -> dict[str, Any]:
    _only(payload, {"n"})
    return {"n": _int(payload, "n", 1, MAX_PRIMES_N)}


def _hash(payload: dict[str, Any]) -> dict[str, Any]:
    _only(payload, {"data", "rounds"})
    data = payload.get("data")
    if not isinstance(data, str) or not _is_unicode(data):
        raise PayloadError("payload.data must be a string of Unicode text", {"field": "data"})
    if len(data) > MAX_HASH_DATA_CHARS:
        raise PayloadError(f"payload.data must be at most {MAX_HASH_DATA_CHARS} characters",
                           {"field": "data", "max_chars": MAX_HASH_DATA_CHARS})
    return {"data": data, "rounds": _int(payload, "rounds", 1, MAX_HASH_ROUNDS, default=1)}


def _sleep(payload: dict[str, Any]) -> dict[str, Any]:
    _only(payload, {"seconds"})
    seconds = payload.get("seconds", 0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise PayloadError("payload.seconds must be a number", {"field": "seconds"})
    if not 0 <= seconds <= MAX_SLEEP_SECONDS:
        raise PayloadError(f"payload.seconds must be between 0 and {MAX_SLEEP_SECONDS}",
                           {"field": "seconds", "min": 0, "max": MAX_SLEEP_SECONDS})
    return {"seconds": int(seconds) if float(seconds).is_integer() else seconds}


def _is_unicode(text: str) -> bool:
    """False for a lone surrogate (JSON can carry "\\ud800"), which no UTF-8 store or hash takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fail(payload: dict[str, Any]) -> dict[str, Any]:
    _only(payload, {"message"})
    message = payload.get("message", DEFAULT_FAIL_MESSAGE)
    if not isinstance(message, str) or len(message) > MAX_FAIL_MESSAGE or not _is_unicode(message):
        raise PayloadError(f"payload.message must be a string of at most {MAX_FAIL_MESSAGE} characters",
                           {"field": "message"})
    return {"message": message}


TASK_TYPES: dict[str, TaskType] = {
    "primes": TaskType("primes", _primes, lambda p: work.primes(p["n"])),
    "hash": TaskType("hash", _hash, lambda p: work.hash_rounds(p["data"], p.get("rounds", 1))),
    "sleep": TaskType("sleep", _sleep, lambda p: work.sleep(p.get("seconds", 0))),
    "fail": TaskType("fail", _fail, lambda p: work.fail(p.get("message", DEFAULT_FAIL_MESSAGE))),
}


def execute(task_type: str, payload: dict[str, Any]) -> Any:
    """The JSON-serialisable result of one task; raises work.TaskFailed for the task's own failure."""
    try:
        kind = TASK_TYPES[task_type]
    except KeyError:
        raise work.TaskFailed(f"unknown task type {task_type!r}") from None
    return kind.run(payload)

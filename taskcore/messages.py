"""Task and result messages, the fingerprint, and all validation of submitted input.

Timestamps are integers in milliseconds since the epoch everywhere (messages, records, heartbeats),
so that Lua, Python and JSON agree without float rounding.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from taskcore.errors import ValidationError
from taskcore.json_body import bounded, parse_json, refused
from taskcore.registry import TASK_TYPES, PayloadError
from taskcore.settings import Settings
from taskcore.states import FINAL_STATUSES, TaskStatus

TASK_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Ids per GET /results?ids=: 100 UUIDs make a 3.7 KB request line, within every HTTP server's default.
MAX_RESULT_IDS = 100
MIN_COMPLEXITY = 1
MAX_COMPLEXITY = 10
DEFAULT_COMPLEXITY = 1
MAX_PAYLOAD_DEPTH = 8
TASK_FIELDS = frozenset({"type", "payload", "complexity", "task_id", "cache"})


class MessageError(ValueError):
    """A broker message that cannot be parsed: it belongs in a dead-letter queue, never requeued."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(task_type: str, payload: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of {"type", "payload"}: equal work, equal fingerprint."""
    return hashlib.sha256(canonical_json({"type": task_type, "payload": payload}).encode()).hexdigest()


@dataclass(frozen=True)
class TaskSpec:
    """A validated submission; `payload` is normalised, `task_id` is None until one is assigned."""

    type: str
    payload: dict[str, Any]
    complexity: int = DEFAULT_COMPLEXITY
    task_id: str | None = None
    cache: bool = True

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.type, self.payload)

    def with_id(self, task_id: str) -> TaskSpec:
        return replace(self, task_id=task_id)

    def to_dict(self) -> dict[str, Any]:
        """The task as a submission writes it, without task_id until one is assigned (a null id is
        refused: absent means "assign one")."""
        # Shallow (dataclasses.asdict deep-copies the payload, a third of a dispatch's CPU): the
        # dict is serialised at once, never mutated.
        data = dict(vars(self))
        if self.task_id is None:
            del data["task_id"]
        return data


@dataclass(frozen=True)
class Task:
    """The task message body: the submitted task plus task_id, fingerprint, submitted_at, attempt."""

    type: str
    payload: dict[str, Any]
    complexity: int
    task_id: str
    cache: bool
    fingerprint: str
    submitted_at: int
    attempt: int = 0

    @classmethod
    def from_spec(cls, spec: TaskSpec, submitted_at: int) -> Task:
        if spec.task_id is None:
            raise ValueError("a Task needs a task_id; assign one to the TaskSpec first")
        return cls(spec.type, spec.payload, spec.complexity, spec.task_id, spec.cache, spec.fingerprint,
                   submitted_at)

    def to_json(self) -> bytes:
        return json.dumps(vars(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, body: bytes | str) -> Task:
        data = _load_object(body)
        try:
            task = cls(
                type=_field(data, "type", str), payload=_field(data, "payload", dict),
                complexity=_field(data, "complexity", int), task_id=_field(data, "task_id", str),
                cache=_field(data, "cache", bool), fingerprint=_field(data, "fingerprint", str),
                submitted_at=_field(data, "submitted_at", int), attempt=_field(data, "attempt", int),
            )
            TASK_TYPES[task.type].validate(task.payload)
        except (KeyError, PayloadError) as error:
            raise MessageError(f"task message: {error}") from None
        # A worker sleeps complexity x unit: a forged complexity must not park it for hours.
        if not MIN_COMPLEXITY <= task.complexity <= MAX_COMPLEXITY or not TASK_ID_RE.fullmatch(task.task_id):
            raise MessageError("task message: complexity or task_id out of range")
        return task


@dataclass(frozen=True)
class TaskResult:
    """The result message body. `result` is set when succeeded, `error` when failed."""

    task_id: str
    fingerprint: str
    status: TaskStatus  # final: succeeded or failed
    worker_id: str
    started_at: int
    finished_at: int
    attempt: int
    result: Any = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dict(vars(self))
        data.pop("error" if self.status == TaskStatus.SUCCEEDED else "result")
        return data

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, body: bytes | str) -> TaskResult:
        data = _load_object(body)
        status = _field(data, "status", str)
        if status not in FINAL_STATUSES:
            raise MessageError(f"result message: status must be succeeded or failed, not {status!r}")
        status = TaskStatus(status)
        error = data.get("error")
        if status is TaskStatus.FAILED and not isinstance(error, str):
            raise MessageError("result message: a failed result needs an error string")
        return cls(
            task_id=_field(data, "task_id", str), fingerprint=_field(data, "fingerprint", str),
            status=status, worker_id=_field(data, "worker_id", str),
            started_at=_field(data, "started_at", int), finished_at=_field(data, "finished_at", int),
            attempt=_field(data, "attempt", int), result=data.get("result"),
            error=error if status is TaskStatus.FAILED else None,
        )


def _load_object(body: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise MessageError(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise MessageError("not a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError(f"field {name!r} must be {kind.__name__}")
    return value


# Submission validation --------------------------------------------------------------------------

@dataclass(frozen=True)
class Submission:
    tasks: list[TaskSpec]
    batch: bool  # {"tasks": [...]} as opposed to one bare task: decides the response's shape


def validate_submission(body: bytes | str, settings: Settings) -> list[TaskSpec]:
    """All validation of a POST /produce or /supervise body; raises ValidationError."""
    return parse_submission(body, settings).tasks


def parse_submission(body: bytes | str, settings: Settings) -> Submission:
    data = parse_json(bounded(body, settings.max_body_bytes))
    if not isinstance(data, dict):
        raise ValidationError("not_an_object",
                              "the body must be a JSON object (a task or {\"tasks\": [...]})")
    if "tasks" not in data:
        return Submission([validate_task(data)], batch=False)
    extra = sorted(set(data) - {"tasks"})
    if extra:
        raise ValidationError("unknown_field", f"unknown field(s) beside tasks: {', '.join(extra)}",
                              {"unknown": extra})
    items = data["tasks"]
    if not isinstance(items, list):
        raise ValidationError("invalid_batch", "tasks must be a list of task objects")
    if not items:
        raise ValidationError("empty_batch", "tasks must hold at least one task")
    if len(items) > settings.max_batch:
        raise ValidationError("batch_too_large", f"at most {settings.max_batch} tasks per batch",
                              {"max_batch": settings.max_batch, "count": len(items)})
    return Submission([validate_task(item, index) for index, item in enumerate(items)], batch=True)


def parse_generate(body: bytes | str, settings: Settings, max_count: int) -> tuple[int, int]:
    """POST /generate {"count": 1..max_count (10), "seed": integer (0)}; no body at all is {}. A
    body of whitespace only is not JSON (a 400, as the API document says of any non-JSON body)."""
    raw = bounded(body, settings.max_body_bytes)
    data = parse_json(raw) if raw else {}
    if not isinstance(data, dict):
        raise ValidationError("not_an_object", "the body must be a JSON object {\"count\", \"seed\"}")
    extra = sorted(set(data) - {"count", "seed"})
    if extra:
        raise ValidationError("unknown_field", f"unknown field(s): {', '.join(extra)}",
                              {"unknown": extra, "allowed": ["count", "seed"]})
    count, seed = data.get("count", 10), data.get("seed", 0)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= max_count:
        raise ValidationError("invalid_count", f"count must be an integer from 1 to {max_count}",
                              {"max": max_count})
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValidationError("invalid_seed", "seed must be an integer")
    return count, seed


def validate_task(item: Any, index: int | None = None) -> TaskSpec:
    where = {} if index is None else {"index": index}
    if not isinstance(item, dict):
        raise ValidationError("not_an_object", "a task must be a JSON object", where)
    extra = sorted(set(item) - TASK_FIELDS)
    if extra:
        raise ValidationError("unknown_field", f"unknown task field(s): {', '.join(extra)}",
                              {**where, "unknown": extra, "allowed": sorted(TASK_FIELDS)})
    known = ", ".join(sorted(TASK_TYPES))
    if "type" not in item:
        raise ValidationError("unknown_type", f"type is required, one of {known}",
                              {**where, "type": None, "got": "missing", "known": sorted(TASK_TYPES)})
    task_type = item["type"]
    if not isinstance(task_type, str) or task_type not in TASK_TYPES:
        raise ValidationError("unknown_type", f"type must be one of {known}",
                              {**where, **refused("type", task_type), "known": sorted(TASK_TYPES)})
    complexity = item.get("complexity", DEFAULT_COMPLEXITY)
    if isinstance(complexity, bool) or not isinstance(complexity, int) or not (
            MIN_COMPLEXITY <= complexity <= MAX_COMPLEXITY):
        raise ValidationError("invalid_complexity",
                              f"complexity must be an integer from {MIN_COMPLEXITY} to {MAX_COMPLEXITY}",
                              {**where, **refused("complexity", complexity),
                               "min": MIN_COMPLEXITY, "max": MAX_COMPLEXITY})
    # Absent means "assign one"; present, even null, must be a valid id.
    task_id = parse_task_id(item["task_id"], where) if "task_id" in item else None
    cache = item.get("cache", True)
    if not isinstance(cache, bool):
        raise ValidationError("invalid_cache", "cache must be true or false",
                              {**where, **refused("cache", cache)})
    payload = item.get("payload", {})
    if _depth(payload) > MAX_PAYLOAD_DEPTH:
        raise ValidationError("payload_too_deep", f"payload nested deeper than {MAX_PAYLOAD_DEPTH}", where)
    if not isinstance(payload, dict):
        raise ValidationError("invalid_payload", "payload must be a JSON object", where)
    try:
        payload = TASK_TYPES[task_type].validate(payload)
    except PayloadError as error:
        field = error.details.get("field")
        value = refused("value", payload[field]) if field in payload else {}
        raise ValidationError("invalid_payload", f"{task_type}: {error.message}",
                              {**where, **error.details, **value}) from None
    return TaskSpec(task_type, payload, complexity, task_id, cache)


def _depth(value: Any, level: int = 0) -> int:
    """Nesting depth of containers; stops descending once past the limit."""
    if level > MAX_PAYLOAD_DEPTH or not isinstance(value, dict | list):
        return level
    children = value.values() if isinstance(value, dict) else value
    return max((_depth(child, level + 1) for child in children), default=level + 1)


def parse_task_id(task_id: Any, where: dict[str, Any] | None = None) -> str:
    """A task id as submitted (`task_id`) or as a path parameter (GET /results/{task_id}): one rule
    for both, so that every id a client can name is one it could have submitted."""
    if not isinstance(task_id, str) or not TASK_ID_RE.fullmatch(task_id):
        raise ValidationError("invalid_task_id", f"task_id must match {TASK_ID_RE.pattern}",
                              {**(where or {}), **refused("task_id", task_id)})
    return task_id


def parse_wait(query: Mapping[str, str] | None, maximum: float) -> float:
    """The `wait` query parameter of the results routes: seconds from 0 to `maximum`, default 0."""
    raw = (query or {}).get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= maximum:  # also false for NaN
        raise ValidationError("invalid_wait", f"wait must be a number of seconds from 0 to {maximum:g}",
                              {"max": maximum})
    return wait


def parse_task_ids(query: Mapping[str, str] | None, maximum: int = MAX_RESULT_IDS) -> list[str]:
    """The `ids` query parameter of GET /results: 1 to `maximum` comma-separated task ids, each
    asked once (first occurrence order)."""
    asked = (query or {}).get("ids", "").split(",")
    if not 1 <= len(asked) <= maximum or not all(TASK_ID_RE.fullmatch(task_id) for task_id in asked):
        raise ValidationError("invalid_ids", f"ids must be 1 to {maximum} comma-separated task ids "
                              f"({TASK_ID_RE.pattern})", {"max": maximum})
    return list(dict.fromkeys(asked))


# The caller's deadline ---------------------------------------------------------------------------

# The producer tells the supervisor when it will stop waiting for the answer (epoch ms), so that the
# supervisor gives up first and undoes what it admitted (dispatch.submit): the producer's 503 then
# leaves nothing behind, however slow the broker or Redis.
DEADLINE_HEADER = "x-taskfaas-deadline-ms"
# How much sooner than the producer's own timeout the supervisor must be done, its undo included.
DEADLINE_MARGIN_MS = 1000


def deadline_for(now: int, settings: Settings) -> int:
    """The deadline a caller of the supervisor sends, as epoch ms: now, plus its wait for the
    answer (SUPERVISOR_TIMEOUT), minus DEADLINE_MARGIN_MS."""
    return now + int(settings.supervisor_timeout * 1000) - DEADLINE_MARGIN_MS


def caller_deadline(value: str | None, now: int, settings: Settings) -> int:
    """The deadline the supervisor works to: the one the caller sent (DEADLINE_HEADER), but never
    later than deadline_for(now), which is also what a caller that sent none gets.

    A value that is not ms since the epoch is a 400 (invalid_deadline). So is a deadline already
    passed when the request arrives (deadline_passed): like a SigV4 request whose signature has
    expired, it is refused before anything is done. A deadline that passes while the tasks are
    being admitted is the dependencies' doing, and a 503 (dispatch.submit)."""
    latest = deadline_for(now, settings)
    if value is None:
        return latest
    if not (value.isascii() and value.isdigit() and len(value) <= 15):
        raise ValidationError("invalid_deadline", f"{DEADLINE_HEADER} must be an integer number of "
                              "ms since the epoch (at most 15 digits)", {"header": DEADLINE_HEADER})
    deadline = int(value)
    if deadline <= now:
        raise ValidationError("deadline_passed", f"the request arrived after its {DEADLINE_HEADER}; "
                              "nothing was admitted", {"late_by_ms": now - deadline})
    return min(deadline, latest)

"""The HTTP front both peers share: a plain WSGI app (no framework, so the front costs the peers as
little as possible), served by gunicorn with gthread workers (see run.GUNICORN).

It validates submissions with taskcore's own parser (the same 400/413 answers as our producer),
assigns UUIDs to tasks without a task_id, marks the ids as known and hands them to the peer's
Backend; results come from the Backend, long-polled up to ?wait=S seconds (at most 20, like ours).

Neither Celery nor Dramatiq can tell an unknown id from a queued one (PENDING / ResultMissing), so
KnownIds marks each submitted id in Redis - one pipelined round trip per request, under the
peer's key prefix and with the result TTL - and GET answers 404 for an id never submitted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

import redis

from taskcore.dispatch import assign_ids
from taskcore.errors import error_body, status_for
from taskcore.messages import TASK_ID_RE, TaskSpec, ValidationError, parse_submission
from taskcore.settings import Settings

log = logging.getLogger("bench.peers.front")
MAX_WAIT_SECONDS = 20.0
REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 503: "Service Unavailable"}
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Backend(Protocol):
    def submit(self, specs: Sequence[TaskSpec]) -> None:
        """Enqueues every spec (each has a task_id) with the peer's own client API."""

    def fetch(self, task_id: str, wait: float) -> dict[str, Any] | None:
        """The final record ({"task_id", "status", "result"|"error"}) once the task ended, waiting up
        to `wait` seconds for it; None if it has not ended (or is unknown)."""


class KnownIds:
    def __init__(self, redis_url: str, prefix: str, ttl: int) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.prefix, self.ttl = f"{prefix}known:", ttl

    def add(self, task_ids: Iterable[str]) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.set(self.prefix + task_id, b"1", ex=self.ttl)
            pipe.execute()

    def __contains__(self, task_id: str) -> bool:
        return bool(self.client.exists(self.prefix + task_id))


def make_app(backend: Backend, known: KnownIds, settings: Settings | None = None) -> WSGIApp:
    settings = settings or Settings()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        try:
            if path == "/produce":
                status, body = (_produce(environ, backend, known, settings) if method == "POST"
                                else _error("method_not_allowed", "use POST"))
            elif path.startswith("/results/"):
                status, body = (_result(environ, path[len("/results/"):], backend, known) if method == "GET"
                                else _error("method_not_allowed", "use GET"))
            else:
                status, body = _error("not_found", f"no route {path}")
        except ValidationError as error:
            status, body = _error(error.code, error.message, error.details)
        except Exception as error:  # a broker or Redis failure: say so, as our producer's 503 does
            log.exception("peer front failed")
            status, body = _error("unavailable", "the peer's broker or result backend failed",
                                  {"reason": repr(error)})
        data = json.dumps(body, separators=(",", ":")).encode()
        start_response(f"{status} {REASONS.get(status, '')}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return app


def _produce(environ: dict[str, Any], backend: Backend, known: KnownIds,
             settings: Settings) -> tuple[int, Any]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(min(length, settings.max_body_bytes + 1))
    submission = parse_submission(raw, settings)
    specs = assign_ids(submission.tasks)
    ids = [spec.task_id or "" for spec in specs]
    known.add(ids)
    backend.submit(specs)
    base = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', 'localhost')}/results/"
    replies = [{"task_id": task_id, "status": "queued", "result_url": base + task_id} for task_id in ids]
    return 202, {"tasks": replies} if submission.batch else replies[0]


def _result(environ: dict[str, Any], task_id: str, backend: Backend, known: KnownIds) -> tuple[int, Any]:
    raw = parse_qs(environ.get("QUERY_STRING", "")).get("wait", ["0"])[0]
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        return _error("invalid_wait", f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}",
                      {"max": MAX_WAIT_SECONDS})
    if not TASK_ID_RE.fullmatch(task_id):
        return _error("not_found", f"no task {task_id}", {"task_id": task_id})
    record = backend.fetch(task_id, 0)
    if record is None:
        if task_id not in known:
            return _error("not_found", f"no task {task_id}", {"task_id": task_id})
        if wait > 0:
            record = backend.fetch(task_id, wait)
    return 200, record or {"task_id": task_id, "status": "queued"}


def _error(code: str, message: str, details: Any = None) -> tuple[int, Any]:
    return status_for(code), error_body(code, message, details)

"""The HTTP front both peers share: a plain WSGI app (no framework, so the front costs the peers as
little as possible), served by gunicorn with gthread workers (see run.GUNICORN).

It validates submissions with taskcore's own parser (the same 400/413 answers as our producer),
assigns UUIDs to tasks without a task_id, marks the ids as known and hands them to the peer's
Backend; results come from the Backend, long-polled up to ?wait=S seconds (at most 20, like ours),
one id per request (GET /results/{id}) or up to 100 (GET /results?ids=A,B,...).

Neither Celery nor Dramatiq can tell an unknown id from a queued one (PENDING / ResultMissing), so
KnownIds marks each submitted id in Redis - one pipelined round trip per request, under the
peer's key prefix and with the result TTL - and GET answers 404 for an id never submitted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

import redis

from taskcore.dispatch import assign_ids
from taskcore.errors import error_body, status_for
from taskcore.messages import (
    TASK_ID_RE,
    TaskSpec,
    ValidationError,
    parse_submission,
    parse_task_ids,
    parse_wait,
)
from taskcore.settings import Settings

log = logging.getLogger("bench.peers.front")
MAX_WAIT_SECONDS = 20.0
# How often GET /results re-reads the pending tasks when the Backend cannot block for the time left
# (Dramatiq's RedisBackend waits in whole seconds: below 1 s it answers at once).
POLL_SECONDS = 0.1
REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 503: "Service Unavailable"}
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Backend(Protocol):
    def submit(self, specs: Sequence[TaskSpec]) -> None:
        """Enqueues every spec (each has a task_id) with the peer's own client API."""

    def fetch(self, task_id: str, wait: float) -> dict[str, Any] | None:
        """The final record ({"task_id", "status", "result"|"error"}) once the task ended, waiting up
        to `wait` seconds for it; None if it has not ended (or is unknown)."""

    def fetch_many(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The final records of those of `task_ids` that have ended, by id, without waiting: what
        fetch(id, 0) answers for each, in one round trip to the result store."""


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

    def unknown(self, task_ids: Sequence[str]) -> set[str]:
        """Those of `task_ids` never submitted (or whose marker expired), in one MGET."""
        if not task_ids:
            return set()
        markers = self.client.mget([self.prefix + task_id for task_id in task_ids])
        return {task_id for task_id, marker in zip(task_ids, markers, strict=True) if marker is None}


def make_app(backend: Backend, known: KnownIds, settings: Settings | None = None) -> WSGIApp:
    settings = settings or Settings()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        try:
            if path == "/produce":
                status, body = (_produce(environ, backend, known, settings) if method == "POST"
                                else _error("method_not_allowed", "use POST"))
            elif path == "/results":
                status, body = (_results(environ, backend, known, settings) if method == "GET"
                                else _error("method_not_allowed", "use GET"))
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


def _results(environ: dict[str, Any], backend: Backend, known: KnownIds,
             settings: Settings) -> tuple[int, Any]:
    """GET /results?ids=A,B,...&wait=S: each known id's record, as GET /results/{id} would answer it,
    once all of them are final or S seconds have passed; ids never submitted go to "not_found".
    Validation is taskcore's own (invalid_ids / invalid_wait, 400), as our supervisor's."""
    query = {name: values[0] for name, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    task_ids = parse_task_ids(query)  # duplicates dropped, first occurrence order
    wait = parse_wait(query, MAX_WAIT_SECONDS)
    deadline = time.monotonic() + wait
    records = backend.fetch_many(task_ids)
    # As in GET /results/{id}: a stored result makes an id known, so only the others need a marker.
    unknown = known.unknown([task_id for task_id in task_ids if task_id not in records])
    pending = [task_id for task_id in task_ids if task_id not in records and task_id not in unknown]
    # Block on one pending task at a time - the last asked, as tasks end roughly in the order they
    # were submitted - then re-read every pending one in one round trip: when the newest ends, most
    # of the others usually have too, so a batch costs a few waits rather than one per task (as our
    # TaskStore.wait_many does).
    while pending and (left := deadline - time.monotonic()) > 0:
        if backend.fetch(pending[-1], left) is None:
            # Not final. Back before the deadline means the Backend cannot block that long (Dramatiq
            # waits in whole seconds): poll rather than spin on Redis until the deadline (past it,
            # this sleeps 0).
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        records.update(backend.fetch_many(pending))
        pending = [task_id for task_id in pending if task_id not in records]
    return 200, {"results": [records.get(task_id) or {"task_id": task_id, "status": "queued"}
                             for task_id in task_ids if task_id not in unknown],
                 "not_found": [task_id for task_id in task_ids if task_id in unknown]}


def _error(code: str, message: str, details: Any = None) -> tuple[int, Any]:
    return status_for(code), error_body(code, message, details)

"""The task HTTP contract as the load generator reads it (bench/driver.py drives it).

The contract is the only coupling (the same engine drives this project and its peers behind small
HTTP fronts):

- ``POST {producer}produce`` with one task ``{"type", "payload", "complexity", ...}`` or
  ``{"tasks": [...]}`` -> 200/202 with ``{"task_id", "status", "cache", "existing", ...}`` (or
  ``{"tasks": [...]}`` in the same order). 429, 502, 503, 504 and transport errors are retried with
  backoff until the deadline; any other status rejects the request's tasks.
- ``GET {results}results/{task_id}?wait=S`` -> 200 with the record; it is final when ``status`` is
  ``succeeded`` or ``failed``. A task answered 404 three times is lost. When no results URL is
  given, the ``result_url`` of each submission reply is long-polled instead.
- Optional fields are used when present: ``cache`` and ``existing`` in the submission reply (the
  cache outcome), ``worker_id``, ``submitted_at`` and ``finished_at`` (epoch ms, the server's view
  of the task, and the time from its end to the client holding the result) in the record.
- With a signer, calls are SigV4-signed (a URL of auth type AWS_IAM, as our supervisor's).
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from typing import Any

import yarl

from taskcore.signing import Signer

FINAL_STATUSES = ("succeeded", "failed")
RETRY_STATUSES = frozenset({429, 502, 503, 504})
JSON_HEADERS = {"Content-Type": "application/json"}


def base_url(url: str | None) -> str | None:
    """The URL with exactly one trailing slash, to which paths are appended."""
    return None if url is None else url.rstrip("/") + "/"


def produce_headers(signer: Signer | None, url: str, body: bytes) -> dict[str, str]:
    """The headers of a POST {producer}produce: signed when there is a signer."""
    return signer.headers("POST", url, body, JSON_HEADERS) if signer else JSON_HEADERS


def signed_get(signer: Signer | None, url: str, params: dict[str, str]) -> tuple[yarl.URL, dict[str, str]]:
    """The URL as sent (encoded once, here, so the signature covers exactly it) and the
    headers: signed when there is a signer (the supervisor's URL is AWS_IAM)."""
    full = f"{url}?{urllib.parse.urlencode(params)}" if params else url
    headers = signer.headers("GET", full) if signer else {}
    return yarl.URL(full, encoded=True), headers


def failure_kind(status: int | None, raw: bytes, error_name: str = "") -> str:
    """A short name for a failed request: the exception's class, or the status and error code."""
    if status is None:
        return error_name or "transport error"
    code = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        error = json.loads(raw).get("error")
        code = error.get("code", "") if isinstance(error, dict) else str(error or "")
    return f"HTTP {status}{' ' + code if code else ''}"


def work_key(task: dict[str, Any]) -> str:
    """The task's work (type and payload): tasks of the same work are computed once, then answered
    together (coalesced) or from the cache."""
    return json.dumps([task.get("type"), task.get("payload")], sort_keys=True, default=str)


def same_key(task: dict[str, Any]) -> str:
    """What makes two tasks answerable by one computation: the same task_id, or else the same work."""
    task_id = task.get("task_id")
    if isinstance(task_id, str):
        return "id " + task_id
    return work_key(task)

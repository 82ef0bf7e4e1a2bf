"""Supervisor: admits and dispatches tasks, serves results, workers and stats; runs the janitor.

The logic is taskcore's (dispatch, store); this module only maps HTTP to it."""

from __future__ import annotations

import logging
from typing import Any

from chalice import Chalice, Response

from taskcore import dispatch
from taskcore.function_url import function_url_handler
from taskcore.http import api_errors, error_response, json_response
from taskcore.messages import (
    DEADLINE_HEADER,
    caller_deadline,
    parse_submission,
    parse_task_id,
    parse_task_ids,
    parse_wait,
)
from taskcore.rabbitmq.amqp import AmqpBroker
from taskcore.settings import Settings
from taskcore.store import TaskStore, now_ms

app = Chalice(app_name="supervisor")
app.log.setLevel(logging.INFO)

# Opened once per execution environment and reused by every invocation it serves.
settings = Settings.from_env()
# single_threaded: an environment serves one invocation at a time, so the store may keep one
# connection instead of going through a pool at every command (TaskStore.client_for says what it saves).
store = TaskStore.for_settings(settings, single_threaded=True)
broker = AmqpBroker(settings)

MAX_WAIT_SECONDS = 20.0  # below the function's 30 s timeout, so a long-poll answers in time


@app.route("/supervise", methods=["POST"], content_types=["application/json"])
@api_errors
def supervise() -> Response:
    request = app.current_request
    submission = parse_submission(request.raw_body or b"", settings)
    deadline = caller_deadline(request.headers.get(DEADLINE_HEADER), now_ms(), settings)
    replies = dispatch.submit(submission.tasks, settings, store, broker, deadline_ms=deadline)
    status = 200 if all(reply["existing"] for reply in replies) else 202
    return json_response({"tasks": replies} if submission.batch else replies[0], status)


@app.route("/results/{task_id}", methods=["GET"])
@api_errors
def result(task_id: str) -> Response:
    task_id = parse_task_id(task_id)  # what no submission could have named is a 400, not a 404
    wait = parse_wait(app.current_request.query_params, MAX_WAIT_SECONDS)
    record = store.wait(task_id, wait) if wait else store.get(task_id)
    if record is None:
        return error_response("not_found", f"no task {task_id}", {"task_id": task_id})
    return json_response(record)


@app.route("/results", methods=["GET"])
@api_errors
def results() -> Response:
    """Many results in one request: answers once every known task is final or the wait is over."""
    params = app.current_request.query_params
    task_ids = parse_task_ids(params)
    wait = parse_wait(params, MAX_WAIT_SECONDS)
    records = store.wait_many(task_ids, wait) if wait else store.get_many(task_ids)
    return json_response({"results": [records[task_id] for task_id in task_ids if task_id in records],
                          "not_found": [task_id for task_id in task_ids if task_id not in records]})


@app.route("/tasks", methods=["GET"])
@api_errors
def tasks() -> Response:
    """The most recently submitted tasks, newest first, filtered by state and type."""
    return json_response(dispatch.recent_tasks(store, app.current_request.query_params))


@app.route("/workers", methods=["GET"])
@api_errors
def workers() -> Response:
    return json_response(dispatch.worker_report(store))


@app.route("/stats", methods=["GET"])
@api_errors
def stats() -> Response:
    return json_response(dispatch.stats(settings, store, broker))


@app.lambda_function(name="janitor")
def janitor(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled: moves the queued tasks of dead workers to live ones."""
    report = dispatch.janitor(settings, store, broker)
    app.log.info("janitor: %s", report)
    return report


handler = function_url_handler(app)

"""Result handler: stores the results the workers publish, fed by the MQ event source mapping.

A whole batch is completed in one Redis script call. If that fails the invocation fails, and
the mapping returns the batch to the queue: no result is lost. Completion is idempotent, so a
redelivered batch changes nothing twice."""

from __future__ import annotations

import base64
import logging
from typing import Any

from chalice import Chalice

from taskcore.messages import MessageError, TaskResult
from taskcore.settings import Settings
from taskcore.store import TaskStore

app = Chalice(app_name="result_handler")
app.log.setLevel(logging.INFO)

settings = Settings.from_env()
store = TaskStore.for_settings(settings)


@app.lambda_function(name="handle_results")
def handle_results(event: dict[str, Any], context: Any) -> dict[str, int]:
    results, unreadable = [], 0
    for messages in event.get("rmqMessagesByQueue", {}).values():
        for message in messages:
            try:
                results.append(TaskResult.from_json(base64.b64decode(message["data"])))
            except (MessageError, ValueError, KeyError) as error:
                # Not a result: storing it is impossible and retrying cannot help; it is logged
                # and skipped (the queue's delivery limit is for messages that make us fail).
                unreadable += 1
                app.log.error("unreadable result message skipped: %s", error)
    outcomes = store.complete(results) if results else []
    summary = {"stored": outcomes.count("completed"), "duplicates": outcomes.count("duplicate"),
               "unreadable": unreadable}
    app.log.info("batch: %s", summary)
    return summary

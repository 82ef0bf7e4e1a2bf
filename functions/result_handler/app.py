"""Result handler: stores the results the workers publish, fed by the MQ event source mapping.

A whole batch is completed in one Redis script call (taskcore.results). While Redis is unreachable
it is retried as long as the invocation has time; then the invocation fails, and the mapping
returns the batch to the queue: no result is lost. Completion is idempotent, so a redelivered batch
changes nothing twice. A poison message (not a result, or one that cannot be stored) is
dead-lettered on its own, and the rest of its batch stored."""

from __future__ import annotations

import logging
from typing import Any

from chalice import Chalice

from taskcore.rabbitmq.amqp import AmqpBroker
from taskcore.results import store_batch
from taskcore.settings import Settings
from taskcore.store import TaskStore

app = Chalice(app_name="result_handler")
app.log.setLevel(logging.INFO)

settings = Settings.from_env()
store = TaskStore.for_settings(settings)
broker = AmqpBroker(settings)  # connects only when there is a poison message to dead-letter


@app.lambda_function(name="handle_results")
def handle_results(event: dict[str, Any], context: Any) -> dict[str, int]:
    summary = store_batch(store, event, context.get_remaining_time_in_millis, broker.dead_letter_results)
    app.log.info("batch: %s", summary)
    return summary

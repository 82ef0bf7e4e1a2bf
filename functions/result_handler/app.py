"""Result handler: stores the results the workers publish, fed by the MQ event source mapping.

A whole batch is completed in one Redis script call (taskcore.results). While Redis is unreachable
it is retried as long as the invocation has time; then the invocation fails, and the mapping
returns the batch to the queue: no result is lost. Completion is idempotent, so a redelivered batch
changes nothing twice. A poison message (not a result, or one that cannot be stored) is
dead-lettered on its own, and the rest of its batch stored."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from chalice import Chalice

from taskcore.results import store_batch
from taskcore.settings import Settings
from taskcore.store import TaskStore

if TYPE_CHECKING:
    from taskcore.rabbitmq.amqp import AmqpBroker

app = Chalice(app_name="result_handler")
app.log.setLevel(logging.INFO)

settings = Settings.from_env()
# single_threaded: an environment serves one invocation at a time, so the store may keep one
# connection instead of going through a pool at every command (TaskStore.client_for says what it saves).
store = TaskStore.for_settings(settings, single_threaded=True)
_broker: AmqpBroker | None = None  # made for the first poison message, then reused


def dead_letter(messages: Sequence[tuple[bytes, str]]) -> None:
    """Poison messages to results.dead. The broker client (and py-amqp with it) is loaded for the
    first of them: most environments never see one, and a cold start is on the path of every
    result it stores (py-amqp's import costs about half of pika's, which was ~15 ms of the init's
    ~280 ms of CPU)."""
    global _broker
    if _broker is None:
        from taskcore.rabbitmq.amqp import AmqpBroker

        _broker = AmqpBroker(settings)
    _broker.dead_letter_results(messages)


@app.lambda_function(name="handle_results")
def handle_results(event: dict[str, Any], context: Any) -> dict[str, int]:
    summary = store_batch(store, event, context.get_remaining_time_in_millis, dead_letter)
    app.log.info("batch: %s", summary)
    return summary

"""A delivered task message on its way from delivery to ack, and the parsing that admits it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from taskcore.messages import MAX_COMPLEXITY, MIN_COMPLEXITY, MessageError, Task
from taskcore.rabbitmq import Consumer
from worker_fleet.execution import AttemptOutcome


@dataclass(eq=False)
class Job:
    """A delivered task message, from delivery to ack. Touched by the pool thread only through `cancel`
    (and reading `task`); everything else belongs to the connection thread."""

    task: Task
    tag: int
    # The connection it came on: its tag means nothing on another, and once that one is gone the
    # broker has the message again.
    consumer: Consumer
    # The broker delivered it before (its worker died or lost its connection): on classic queues
    # mark_running counts such deliveries against the delivery limit.
    redelivered: bool = False
    # The worker whose queue it was stolen from (this one's slot was idle), or "" (its own queue,
    # or the shared one).
    stolen_from: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    started_at: int = 0
    # The outcome that counts: set once; a later one (a thread outliving its time limit) is discarded.
    decided: AttemptOutcome | None = None
    # time.monotonic() after which the connection thread fails the attempt (its time limit).
    deadline: float = 0.0
    limit: float = 0.0
    publish_failures: int = 0


def parse_task(body: bytes) -> Task:
    """A task message, or MessageError for anything the worker must not run (dead-lettered)."""
    task = Task.from_json(body)
    if not MIN_COMPLEXITY <= task.complexity <= MAX_COMPLEXITY or task.attempt < 0:
        raise MessageError(f"task message: complexity {task.complexity} or attempt {task.attempt} "
                           "out of range")
    return task

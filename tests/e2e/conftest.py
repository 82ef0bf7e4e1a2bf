"""The whole system, for real: localfaas running template.yaml, the worker fleet, RabbitMQ and
Redis, all in a namespace of the test run's own that is removed afterwards (see taskfaas/stack.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskfaas.stack import Stack, start_stack, stop_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("stack"))
    yield running
    stop_stack(running)

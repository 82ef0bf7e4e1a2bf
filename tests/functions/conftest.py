"""The functions' tests that need the real stack: template.yaml under localfaas, RabbitMQ and Redis,
in a namespace of their own that is removed afterwards (taskfaas/stack.py). No workers: these tests
check what the functions answer, and admitted tasks wait in their queues until the cleanup."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskfaas.stack import Stack, start_stack, stop_stack


@pytest.fixture(scope="session")
def functions_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("functions"), workers=0, namespace_prefix="fn")
    yield stack
    stop_stack(stack)

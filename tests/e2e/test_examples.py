"""The README's `localfaas invoke` examples (docs/examples/), run with the command line as a user
types them, against the whole system: each does something real and exits 0."""

from __future__ import annotations

import json
from typing import Any

from taskfaas.stack import Stack

EXAMPLES = "docs/examples"


def invoke(stack: Stack, function: str, example: str) -> Any:
    result = stack.host.cli("invoke", function, "--payload", f"@{EXAMPLES}/{example}")
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert result.stderr == ""
    return json.loads(result.stdout)


def test_produce_event_submits_a_task(stack: Stack) -> None:
    answer = invoke(stack, "Producer", "produce-event.json")
    assert answer["statusCode"] == 202, answer
    task = json.loads(answer["body"])
    assert (task["status"], task["cache"], task["existing"]) == ("queued", "miss", False)
    record = stack.wait_final(task["task_id"])
    assert record["status"] == "succeeded", record
    # The same work again: answered from the cache, with the result
    again = json.loads(invoke(stack, "Producer", "produce-event.json")["body"])
    assert again["cache"] == "hit", again
    assert again["result"] == record["result"]


def test_workers_event_lists_the_fleet(stack: Stack) -> None:
    answer = invoke(stack, "Supervisor", "workers-event.json")
    assert answer["statusCode"] == 200, answer
    workers = json.loads(answer["body"])["workers"]
    assert len([w for w in workers if w["live"]]) == len(stack.workers()["workers"]) > 0


def test_janitor_event_sweeps(stack: Stack) -> None:
    report = invoke(stack, "Janitor", "janitor-event.json")
    assert {"dead", "moved"} <= set(report), report
    assert report["dead"] == []  # every worker of this stack is alive

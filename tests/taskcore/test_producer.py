"""Task generation for /generate and the load test: reproducible, varied, all valid; what the
producer sends the supervisor and makes of its answer; what the producer's app loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from taskcore.messages import validate_task
from taskcore.producer import SupervisorClient, SupervisorReply, generate_tasks, submission_body
from taskcore.settings import Settings
from taskcore.signing import Signer

PRODUCER_APP = Path(__file__).parents[2] / "functions" / "producer" / "app.py"


def test_same_seed_same_tasks_and_other_seed_other_tasks() -> None:
    assert generate_tasks(50, seed=3) == generate_tasks(50, seed=3)
    assert generate_tasks(50, seed=3) != generate_tasks(50, seed=4)


def test_tasks_vary_and_are_distinct() -> None:
    tasks = generate_tasks(200, seed=1)
    assert {t.type for t in tasks} == {"primes", "hash", "sleep"}
    assert len({t.complexity for t in tasks}) == 5
    assert len({t.fingerprint for t in tasks}) >= 190  # repeats are the caller's choice, not ours


def test_failures_only_when_asked() -> None:
    assert "fail" in {t.type for t in generate_tasks(100, seed=1, include_failures=True)}


# The producer's side of a submission -------------------------------------------------------------

def client(url: str = "http://supervisor.example/") -> SupervisorClient:
    return SupervisorClient(Settings(supervisor_url=url), Signer("AKIDTEST", "secret", "us-east-1"))


def test_accepted_names_the_result_url_and_no_worker_in_the_supervisors_shape() -> None:
    supervisor = client()
    one = SupervisorReply(202, {"task_id": "a", "status": "queued", "cache": "miss", "worker_id": "w1",
                                "existing": False})
    assert supervisor.accepted(one) == {"task_id": "a", "status": "queued", "cache": "miss",
                                        "existing": False, "result_url": "http://supervisor.example/results/a"}
    batch = SupervisorReply(202, {"tasks": [
        {"task_id": "a", "status": "succeeded", "cache": "hit", "worker_id": "", "existing": False,
         "result": 4},
        {"task_id": "b", "status": "queued", "cache": "coalesced", "worker_id": "w1", "existing": True}]})
    answer = supervisor.accepted(batch)
    assert [task["result_url"] for task in answer["tasks"]] == ["http://supervisor.example/results/a",
                                                                "http://supervisor.example/results/b"]
    assert answer["tasks"][0]["result"] == 4 and "result" not in answer["tasks"][1]  # a hit's result kept
    assert not any("worker_id" in task for task in answer["tasks"])
    assert batch.tasks[1]["worker_id"] == "w1"  # the supervisor's answer is left as it was


def test_a_generated_batch_goes_without_ids_so_the_supervisor_assigns_them() -> None:
    specs = generate_tasks(3, seed=1)
    body = json.loads(submission_body(specs))
    assert [validate_task(item) for item in body["tasks"]] == specs
    assert not any("task_id" in item for item in body["tasks"])  # a null one would be refused


def test_the_producer_app_loads_neither_pika_nor_redis_nor_an_sdk() -> None:
    # In a process of its own, as a Lambda environment loads the app: the producer forwards bodies
    # and parses none, so nothing of the broker or the task store is loaded; it signs and sends
    # with taskcore's own signer and HTTP client, so neither botocore nor urllib3 is loaded either.
    script = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('app', {str(PRODUCER_APP)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n")
    env = {**os.environ, "SUPERVISOR_URL": "http://127.0.0.1:1/", "AWS_ACCESS_KEY_ID": "AKIDTEST",
           "AWS_SECRET_ACCESS_KEY": "secret"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=60, cwd=PRODUCER_APP.parent)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert {"chalice", "taskcore"} <= loaded  # it did load the app
    assert not loaded & {"pika", "redis", "botocore", "urllib3", "ssl"}

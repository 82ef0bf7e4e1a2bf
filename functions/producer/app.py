"""Producer: hands submissions to the supervisor, which validates them and assigns their ids, and
logs what it admitted.

It parses no submission itself (taskcore/producer.py says why), so it loads neither pika nor redis;
it signs and sends with taskcore's own signer and HTTP client (docs/taskcore.md, "The producer's
calls"), so neither botocore nor urllib3 is loaded at its cold start."""

from __future__ import annotations

import json
import time

from chalice import Chalice, Response

from taskcore.function_url import function_url_handler
from taskcore.http import api_errors, json_response
from taskcore.json_body import bounded
from taskcore.messages import parse_generate
from taskcore.producer import MAX_GENERATE, SupervisorClient, SupervisorReply, generate_tasks, submission_body
from taskcore.settings import Settings

app = Chalice(app_name="producer")

settings = Settings.from_env()
supervisor = SupervisorClient(settings)  # a keep-alive connection kept for the environment's life


@app.route("/produce", methods=["POST"], content_types=["application/json"])
@api_errors
def produce() -> Response:
    received_at = time.time()
    # The size is checked here too: a body the supervisor would refuse is not sent there.
    reply = supervisor.supervise(bounded(app.current_request.raw_body or b"", settings.max_body_bytes))
    if reply.refused:
        return json_response(reply.body, reply.status)
    _log_received(received_at, reply)
    return json_response(supervisor.accepted(reply), reply.status)


@app.route("/generate", methods=["POST"], content_types=["application/json"])
@api_errors
def generate() -> Response:
    received_at = time.time()
    count, seed = parse_generate(app.current_request.raw_body or b"", settings, MAX_GENERATE)
    specs = generate_tasks(count, seed)
    accepted = []
    for start in range(0, len(specs), settings.max_batch):
        reply = supervisor.supervise(submission_body(specs[start:start + settings.max_batch]))
        if reply.refused:
            return json_response(reply.body, reply.status)
        _log_received(received_at, reply)
        accepted += supervisor.accepted(reply)["tasks"]
    return json_response({"tasks": accepted}, 202)


def _log_received(received_at: float, reply: SupervisorReply) -> None:
    # One structured line per admission: how many tasks came in and the ids they were given.
    task_ids = [task["task_id"] for task in reply.tasks]
    print(json.dumps({"event": "received", "at": received_at, "count": len(task_ids),
                      "task_ids": task_ids[:50]}))


handler = function_url_handler(app)

"""Producer: validates submissions, assigns ids, logs them and hands them to the supervisor."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

from chalice import Chalice, Response

from taskcore.dispatch import assign_ids
from taskcore.function_url import function_url_handler
from taskcore.http import api_errors, json_response
from taskcore.messages import TaskSpec, parse_generate, parse_submission
from taskcore.producer import MAX_GENERATE, SupervisorClient, generate_tasks
from taskcore.settings import Settings

app = Chalice(app_name="producer")
log = logging.getLogger("producer")
log.setLevel(logging.INFO)

settings = Settings.from_env()
supervisor = SupervisorClient(settings)  # one pooled keep-alive connection per environment


@app.route("/produce", methods=["POST"], content_types=["application/json"])
@api_errors
def produce() -> Response:
    submission = parse_submission(app.current_request.raw_body or b"", settings)
    return _submit(assign_ids(submission.tasks), submission.batch)


@app.route("/generate", methods=["POST"], content_types=["application/json"])
@api_errors
def generate() -> Response:
    count, seed = parse_generate(app.current_request.raw_body or b"", settings, MAX_GENERATE)
    specs = assign_ids(generate_tasks(count, seed))
    replies = [_submit(specs[i:i + settings.max_batch], batch=True).body["tasks"]
               for i in range(0, len(specs), settings.max_batch)]
    return json_response({"tasks": [reply for chunk in replies for reply in chunk]}, 202)


def _submit(specs: list[TaskSpec], batch: bool) -> Response:
    # One structured line per request: what came in, by type, with the ids it was given.
    print(json.dumps({"event": "received", "at": time.time(), "count": len(specs),
                      "types": Counter(spec.type for spec in specs),
                      "task_ids": [spec.task_id for spec in specs][:50]}))
    reply = supervisor.supervise(specs)
    if reply.status >= 400:
        return json_response(reply.body, reply.status)
    accepted = [
        {"task_id": item["task_id"], "status": item["status"], "cache": item.get("cache"),
         "existing": item.get("existing", False), "result_url": supervisor.result_url(item["task_id"]),
         **({"result": item["result"]} if "result" in item else {})}
        for item in reply.body.get("tasks", [])
    ]
    status = 200 if all(item["existing"] for item in accepted) else 202
    return json_response({"tasks": accepted} if batch else accepted[0], status)


handler = function_url_handler(app)

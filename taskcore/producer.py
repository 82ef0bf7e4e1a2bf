"""The producer's logic without HTTP: reproducible task generation and the supervisor client.

The producer parses nothing of a submission: the supervisor's /supervise is an API of its own and
validates what it receives, so the producer forwards the body as it came (POST /produce) and the
supervisor parses it, validates it and assigns the ids, once. The producer relays a refusal as it
is and turns an acceptance into its own answer (`SupervisorClient.accepted`)."""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from taskcore.errors import Unavailable
from taskcore.httpclient import Client, TransportError
from taskcore.messages import DEADLINE_HEADER, TaskSpec, deadline_for, validate_task
from taskcore.settings import Settings
from taskcore.signing import Signer, host_header

MAX_GENERATE = 10_000


def generate_tasks(count: int, seed: int, include_failures: bool = False) -> list[TaskSpec]:
    """`count` tasks of varying types and complexities; the same seed gives the same tasks."""
    rng = random.Random(seed)
    kinds = ["primes", "hash", "sleep"] + (["fail"] if include_failures else [])
    specs = []
    for _ in range(count):
        kind = rng.choice(kinds)
        if kind == "primes":
            payload: dict[str, Any] = {"n": rng.randrange(1_000, 200_000)}
        elif kind == "hash":
            data = "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randrange(8, 64)))
            payload = {"data": data, "rounds": rng.randrange(1, 1_000)}
        elif kind == "sleep":
            # A few milliseconds on top of the simulated duration; distinct so that generated
            # tasks measure work, not coalescing (repeats are the load test's business).
            payload = {"seconds": rng.randrange(1, 100_000) / 10_000_000}  # 0.1 us to 10 ms
        else:
            payload = {"message": f"generated failure {rng.randrange(1_000_000)}"}
        specs.append(validate_task({"type": kind, "payload": payload, "complexity": rng.randint(1, 5)}))
    return specs


@dataclass(frozen=True)
class SupervisorReply:
    """What /supervise answered: a refusal ({"error"}, 4xx) or, 200/202, one task's answer or
    {"tasks": [...]} as the submission was one task or a batch."""

    status: int
    body: dict[str, Any]

    @property
    def refused(self) -> bool:
        return self.status >= 400

    @property
    def tasks(self) -> list[dict[str, Any]]:
        """The per-task answers of an accepted submission, in order."""
        return self.body.get("tasks", [self.body])


def submission_body(specs: Sequence[TaskSpec]) -> bytes:
    """The /supervise body of a batch of generated tasks (ids left to the supervisor)."""
    return json.dumps({"tasks": [spec.to_dict() for spec in specs]}).encode()


class SupervisorClient:
    """POSTs to the supervisor's function URL over a keep-alive connection (taskcore/httpclient.py),
    created once per execution environment, signed with the environment's credentials (the URL's
    auth type is AWS_IAM). Any transport failure, refusal of our signature or 5xx becomes
    Unavailable (-> 503). A submission is sent at most once whole: one the supervisor may have
    admitted is never sent again behind the caller's back (httpclient says when it re-sends)."""

    CONNECT_TIMEOUT = 2.0

    def __init__(self, settings: Settings, signer: Signer | None = None) -> None:
        if not settings.supervisor_url:
            raise Unavailable("SUPERVISOR_URL is not set")
        self._settings = settings
        self.base_url = settings.supervisor_url.rstrip("/") + "/"
        self._signer = signer or Signer.from_env()
        self._http = Client(self.base_url, self.CONNECT_TIMEOUT, settings.supervisor_timeout)
        self._supervise_url = self.base_url + "supervise"
        self._supervise_target = urlsplit(self._supervise_url).path
        # What is signed is what is sent: the Host header too.
        self._headers = {"Host": host_header(self._supervise_url), "Content-Type": "application/json"}

    def result_url(self, task_id: str) -> str:
        return f"{self.base_url}results/{task_id}"

    def accepted(self, reply: SupervisorReply) -> dict[str, Any]:
        """The producer's answer to an accepted submission (docs/openapi.yaml, AcceptedTask): the
        supervisor's, each task with its result_url and without the worker it went to, in the same
        shape (one task or {"tasks"})."""
        tasks = [{**{k: v for k, v in task.items() if k != "worker_id"},
                  "result_url": self.result_url(task["task_id"])} for task in reply.tasks]
        return {"tasks": tasks} if "tasks" in reply.body else tasks[0]

    def supervise(self, body: bytes) -> SupervisorReply:
        """POST /supervise with `body` as it is, signed, with the time we stop waiting for it."""
        deadline = deadline_for(int(time.time() * 1000), self._settings)
        headers = {**self._headers, DEADLINE_HEADER: str(deadline)}
        if self._signer is not None:
            headers = self._signer.headers("POST", self._supervise_url, body, headers)
        try:
            response = self._http.request("POST", self._supervise_target, headers, body)
        except TransportError as error:
            raise Unavailable("the supervisor is unreachable", {"reason": str(error)}) from error
        try:
            reply = json.loads(response.body or b"{}")
        except ValueError:
            reply = {}
        if response.status in (401, 403):
            raise Unavailable("the supervisor refused the producer's credentials",
                              {"status": response.status, "reason": reply.get("Message")
                               if isinstance(reply, dict) else None})
        error = reply.get("error") if isinstance(reply, dict) else None
        error = error if isinstance(error, dict) else {}
        if error.get("code") == "deadline_passed":  # it got our request late: not our client's fault
            raise Unavailable("the supervisor received the submission after the producer's deadline",
                              {"status": response.status, "reason": error.get("message")})
        if response.status >= 500:
            raise Unavailable("the supervisor could not take the tasks",
                              {"status": response.status, "reason": error.get("message")})
        return SupervisorReply(response.status, reply)

"""docs/openapi.yaml against the running functions, by schemathesis: generated requests, valid and
not, to every operation; no 5xx, and every answer (status, content type, body) as documented.

The stack runs without workers: the API is what is checked, and generated tasks (primes of five
million, sleeps of ten minutes) wait in their queues until the namespace is removed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig

from taskcore.signing import Signer
from taskfaas.stack import Stack, start_stack, stop_stack

ROOT = Path(__file__).parents[2]
# Invalid requests must be refused with a 4xx. schemathesis's list of refusals lacks 413, which is
# how a body over MAX_BODY_BYTES (1 MiB, a limit no JSON Schema can state) is refused before it is
# read: its generated invalid bodies are sometimes that large (CI saw one of 1.4 MB).
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml", config=SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}}))
PRODUCER_PATHS = ("/produce", "/generate")
# The document's format for the deadline header: ms since the epoch, still ahead when the request
# arrives (one already passed is a 400). schemathesis draws some cases long before it sends them (CI
# once sent one 110 s after drawing it), so the deadlines drawn are a day to a year ahead; the
# supervisor cuts them to its own 10 s wait.
schemathesis.openapi.format("epoch-ms-deadline", st.integers(86_400_000, 365 * 86_400_000).map(
    lambda ahead_ms: str(int(time.time() * 1000) + ahead_ms)))


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("openapi"), workers=0)
    yield stack
    stop_stack(stack)


class SigV4(requests.auth.AuthBase):
    """Signs the request exactly as it goes out (the supervisor's URL is AWS_IAM)."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body.encode() if isinstance(request.body, str) else request.body or b""
        signed = self.signer.headers(str(request.method), str(request.url), body, dict(request.headers))
        request.headers.update(signed)
        return request


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_the_document(case: schemathesis.Case, api_stack: Stack) -> None:
    producer = case.path in PRODUCER_PATHS
    base = api_stack.producer if producer else api_stack.supervisor
    response = case.call(base_url=base.rstrip("/"), timeout=30,
                         auth=None if producer else SigV4(api_stack.signer))
    assert response.status_code < 500 or response.status_code == 503, response.text
    case.validate_response(response)

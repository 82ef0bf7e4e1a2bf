"""The Runtime API's endpoint on the wire, with pipelined requests (docs/lambda_behaviours.md §1):
answers in order, a result's 202 held while a request is pipelined behind it and written with
that request's answer, written at once otherwise. A real endpoint on a real socket, served by an
event loop in a thread, for a minimal environment of the test's own (the `RuntimeHandler` seam):
the test decides when an invocation arrives."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
import uvloop

from localfaas.invocation import Invocation
from localfaas.runtime_api import NextAnswer, RuntimeEndpoint

PREFIX = "/2018-06-01/runtime/invocation"
ACCEPTED = (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
            b'{"status":"OK"}')


class OneEnvironment:
    """Hands out invocations when the test says so; records the results it is given."""

    function_arn = "arn:aws:lambda:us-east-1:000000000000:function:F"
    initialized = True

    def __init__(self) -> None:
        self.waiting: NextAnswer | None = None
        self.current: Invocation | None = None
        self.results: list[bytes] = []

    def current_request_id(self) -> str | None:
        return self.current.request_id if self.current else None

    def next_invocation(self, answer: NextAnswer) -> None:
        self.waiting = answer

    def forget_next(self, answer: NextAnswer) -> None:
        self.waiting = None

    def hand(self, request_id: str) -> None:
        assert self.waiting is not None
        self.current = Invocation(b'{"n": 1}', request_id=request_id)
        answer, self.waiting = self.waiting, None
        answer(self.current)

    def respond(self, body: bytes, content_type: str) -> None:
        self.results.append(body)

    def report_error(self, body: bytes) -> None:
        self.results.append(body)

    def report_init_error(self, body: bytes) -> None:
        self.results.append(body)

    def reject_oversized_response(self) -> None:
        pass


@pytest.fixture
def api() -> Iterator[tuple[asyncio.AbstractEventLoop, OneEnvironment, socket.socket]]:
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    environment = OneEnvironment()
    endpoint = asyncio.run_coroutine_threadsafe(RuntimeEndpoint.open(environment), loop).result(5)
    client = socket.create_connection(("127.0.0.1", endpoint.port), timeout=5)
    try:
        yield loop, environment, client
    finally:
        client.close()
        loop.call_soon_threadsafe(endpoint.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def on_loop(loop: asyncio.AbstractEventLoop, call) -> None:
    async def run() -> None:
        call()
    asyncio.run_coroutine_threadsafe(run(), loop).result(5)


def get_next() -> bytes:
    return f"GET {PREFIX}/next HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def post(request_id: str, body: bytes = b'"ok"') -> bytes:
    return (f"POST {PREFIX}/{request_id}/response HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def read_until(client: socket.socket, count: int) -> bytes:
    """Everything until `count` complete answers (each with a Content-Length body) are in."""
    data = b""
    while data.count(b"HTTP/1.1 ") < count or not data.endswith((b"}", b'{"n": 1}')):
        chunk = client.recv(65536)
        assert chunk, "the Runtime API closed the connection"
        data += chunk
    return data


def nothing_to_read(client: socket.socket) -> bool:
    client.settimeout(0.3)
    try:
        return client.recv(65536) == b""
    except TimeoutError:
        return True
    finally:
        client.settimeout(5)


def test_a_pipelined_next_carries_the_held_202(api) -> None:
    loop, environment, client = api
    client.sendall(get_next())
    on_loop(loop, lambda: environment.hand("request-1"))
    assert b"Lambda-Runtime-Aws-Request-Id: request-1" in read_until(client, 1)
    client.sendall(post("request-1") + get_next())  # one write, as the lean client sends them
    assert nothing_to_read(client)  # the 202 waits for the /next answer behind it
    assert environment.results == [b'"ok"']  # ... but the result was taken at once
    on_loop(loop, lambda: environment.hand("request-2"))
    both = read_until(client, 2)
    assert both.startswith(ACCEPTED)  # in order: the 202 first, then the next invocation
    assert b"Lambda-Runtime-Aws-Request-Id: request-2" in both[len(ACCEPTED):]


def test_a_result_alone_is_answered_at_once(api) -> None:
    loop, environment, client = api
    client.sendall(get_next())
    on_loop(loop, lambda: environment.hand("request-1"))
    read_until(client, 1)
    client.sendall(post("request-1"))  # as awslambdaric sends it: nothing behind it
    assert read_until(client, 1) == ACCEPTED


def test_a_refused_result_is_not_held(api) -> None:
    loop, environment, client = api
    client.sendall(get_next())
    on_loop(loop, lambda: environment.hand("request-1"))
    read_until(client, 1)
    client.sendall(post("someone-else") + get_next())
    answer = read_until(client, 1)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request") and b"InvalidRequestID" in answer
    assert environment.results == []

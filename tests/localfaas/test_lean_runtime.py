"""The lean runtime interface client on the wire, against a Runtime API of the test's own (a real
socket and a real runtime process, no host): it sends what awslambdaric sends, request for
request and byte for byte where it matters, keeps one connection, and reads answers however they
are cut up. docs/lambda_behaviours.md §1; localfaas/lean_runtime.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.localfaas.conftest import CLIENT_MODULES

HANDLERS = '''
import decimal

def ok(event, context):
    print("ok got", event)
    return {"price": decimal.Decimal("2.50"), "text": "caf\\u00e9", "request": context.aws_request_id}

def boom(event, context):
    raise ValueError("bad thing")

def raw(event, context):
    return b"\\x00\\x01raw"
'''
EVENT = b'{"version": "2.0", "rawPath": "/"}'
ACCEPTED = (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
            b'{"status":"OK"}')
# What the comparison ignores: the port in Host, and the headers of libcurl's and http.client's
# own (Accept, Accept-Encoding), which no Runtime API reads.
IGNORED = {"host", "accept", "accept-encoding"}


@dataclass
class Request:
    connection: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    pipelined: bool = False  # it had arrived whole before the answer to the one before it was sent


def next_answer(number: int) -> bytes:
    deadline = int(time.time() * 1000) + 60_000
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Lambda-Runtime-Aws-Request-Id: request-%d\r\nLambda-Runtime-Deadline-Ms: %d\r\n"
            b"Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:F\r\n"
            b"Lambda-Runtime-Trace-Id: Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=1\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (number, deadline, len(EVENT), EVENT))


class RuntimeApi:
    """A Runtime API that serves `invocations` events to one runtime process and records every
    request; `piece` cuts each answer into writes of that many bytes; `close_after_response`
    answers each /response with Connection: close and then closes."""

    def __init__(self, tmp_path: Path, client: str, handler: str, invocations: int = 2,
                 piece: int = 0, close_after_response: bool = False) -> None:
        (tmp_path / "app.py").write_text(HANDLERS)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(15)
        env = {"PATH": os.environ.get("PATH", ""), "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
               "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.server.getsockname()[1]}",
               "AWS_LAMBDA_FUNCTION_NAME": "F", "AWS_LAMBDA_LOG_STREAM_NAME": "stream"}
        self.process = subprocess.Popen([sys.executable, "-m", CLIENT_MODULES[client], handler],
                                        cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        self.invocations, self.piece, self.close_after = invocations, piece, close_after_response
        self.requests: list[Request] = []

    def serve(self) -> list[Request]:
        try:
            self._serve()
        finally:
            self.process.kill()
            self.output = self.process.communicate()[0].decode(errors="replace")
            self.server.close()
        return self.requests

    def _serve(self) -> None:
        served = 0
        connections = 0
        while True:
            conn, _ = self.server.accept()
            connections += 1
            with conn:
                conn.settimeout(15)
                buffer = b""
                while True:
                    request, buffer = self._read(conn, buffer, connections)
                    if request is None:
                        break
                    self.requests.append(request)
                    if request.path.endswith("/next"):
                        if served == self.invocations:
                            return  # the runtime waits for more: all it did is recorded
                        served += 1
                        self._write(conn, next_answer(served))
                    elif request.path.endswith("/init/error"):
                        self._write(conn, ACCEPTED)
                        return
                    elif self.close_after:
                        self._write(conn, ACCEPTED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
                        break
                    else:
                        self._write(conn, ACCEPTED)

    def _write(self, conn: socket.socket, data: bytes) -> None:
        if not self.piece:
            conn.sendall(data)
            return
        for start in range(0, len(data), self.piece):
            conn.sendall(data[start:start + self.piece])
            time.sleep(0.0005)  # separate segments, so that the client's reads see them cut up

    @staticmethod
    def _read(conn: socket.socket, buffer: bytes, connection: int) -> tuple[Request | None, bytes]:
        arrived = b"\r\n\r\n" in buffer  # read along with the request before it
        while b"\r\n\r\n" not in buffer:
            chunk = conn.recv(65536)
            if not chunk:
                return None, buffer
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        method, path, _version = head.split(b"\r\n")[0].decode().split(" ")
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", 0))
        while len(rest) < length:
            rest += conn.recv(65536)
        return Request(connection, method, path, headers, rest[:length], arrived), rest[length:]


def wire(requests: list[Request]) -> list[tuple[str, str, dict[str, str], bytes]]:
    return [(r.method, r.path, {k: v for k, v in r.headers.items() if k not in IGNORED}, r.body)
            for r in requests]


@pytest.mark.parametrize("handler", ["app.ok", "app.boom", "app.raw", "missing.handler"])
def test_the_lean_client_sends_what_awslambdaric_sends(tmp_path: Path, handler: str) -> None:
    # The same folder for both: tracebacks and the X-Ray cause hold its paths.
    seen = {client: RuntimeApi(tmp_path, client, handler).serve() for client in ("official", "lean")}
    assert wire(seen["lean"]) == wire(seen["official"])
    paths = [r.path.rsplit("/", 1)[1] for r in seen["lean"]]
    expected = {"app.ok": ["next", "response"] * 2 + ["next"], "app.raw": ["next", "response"] * 2 + ["next"],
                "app.boom": ["next", "error"] * 2 + ["next"], "missing.handler": ["error"]}[handler]
    assert paths == expected
    assert {r.connection for r in seen["lean"]} == {1}  # one keep-alive connection throughout


@pytest.mark.parametrize("handler", ["app.ok", "app.boom"])
def test_the_lean_client_sends_the_next_request_with_its_result(tmp_path: Path, handler: str) -> None:
    # One write: the /next after a /response or /error arrives with it, before its 202 is sent.
    # awslambdaric waits for each answer before it sends the next request.
    seen = {client: RuntimeApi(tmp_path, client, handler).serve() for client in ("official", "lean")}
    assert [r.pipelined for r in seen["lean"]] == [False, False, True, False, True]
    assert [r.path.rsplit("/", 1)[1] for r in seen["lean"]][2::2] == ["next", "next"]
    assert not any(r.pipelined for r in seen["official"])


def test_what_the_handler_returned_reaches_the_api_as_awslambdaric_marshals_it(tmp_path: Path) -> None:
    requests = RuntimeApi(tmp_path, "lean", "app.ok").serve()
    [first, *_] = [r for r in requests if r.path.endswith("/response")]
    assert first.path == "/2018-06-01/runtime/invocation/request-1/response"
    assert first.headers["content-type"] == "application/json"
    assert first.body == '{"price": 2.50, "text": "caf\u00e9", "request": "request-1"}'.encode()


@pytest.mark.parametrize("piece", [1, 7])
def test_answers_cut_into_pieces_and_closed_connections(tmp_path: Path, piece: int) -> None:
    api = RuntimeApi(tmp_path, "lean", "app.ok", invocations=3, piece=piece, close_after_response=True)
    requests = api.serve()
    assert [r.path.rsplit("/", 1)[1] for r in requests] == ["next", "response"] * 3 + ["next"]
    # Each Connection: close ended a connection; the client opened the next for its next request.
    assert [r.connection for r in requests] == [1, 1, 2, 2, 3, 3, 4]
    assert "ok got {'version': '2.0', 'rawPath': '/'}" in api.output


def test_an_answer_that_is_not_http_ends_the_runtime(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(HANDLERS)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(15)
    env = {"PATH": os.environ.get("PATH", ""), "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
           "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.getsockname()[1]}"}
    process = subprocess.Popen([sys.executable, "-m", "localfaas.lean_runtime", "app.ok"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"SPDY/3 nonsense\r\n\r\n")
            output = process.communicate(timeout=15)[0].decode()
    finally:
        process.kill()
        server.close()
    assert process.returncode == 1
    assert "LAMBDA_RUNTIME Failed to get next invocation: not an HTTP/1.1 response" in output

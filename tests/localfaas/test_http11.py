"""localfaas.http11, the function URLs' HTTP/1.1 server, on a real socket with a handler of the
test's own (the host's function-URL tests, test_function_urls.py, cover what Lambda does with it):
framing, keep-alive, pipelining in order, chunked bodies, Expect, the body limit, bad requests."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO

import pytest
import uvloop

from localfaas.http11 import HttpReply, HttpRequest, HttpServer

LIMIT = 1000
DISCARD = 16 * 1024 * 1024  # more than the kernel buffers between client and server
TOO_LARGE = HttpReply(413, b'{"message": "too large"}', [("Content-Type", "application/json")])


class Recorder:
    """The test's handler: echoes the request as JSON; a path can ask it to wait or misbehave."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.finished: list[str] = []

    async def __call__(self, request: HttpRequest) -> HttpReply:
        self.seen.append(request.path)
        if request.path.startswith("/sleep/"):
            await asyncio.sleep(float(request.path.rsplit("/", 1)[1]))
        self.finished.append(request.path)
        if request.path == "/inject":
            return HttpReply(200, b"x", [("X-Bad", "a\r\nSet-Cookie: evil=1")])
        if request.path == "/empty":
            return HttpReply(204, b"ignored")
        if request.path == "/big":
            return HttpReply(200, b"z" * (8 * 1024 * 1024))
        document = {"method": request.method, "path": request.path, "query": request.query,
                    "version": request.version, "headers": request.headers,
                    "body": request.body.decode("latin-1"), "peer": request.peer}
        return HttpReply(200, json.dumps(document).encode(), [("Content-Type", "application/json")])


@pytest.fixture
def server() -> Iterator[tuple[tuple[str, int], Recorder]]:
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    recorder = Recorder()
    http = HttpServer(recorder, LIMIT, TOO_LARGE, DISCARD)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    asyncio.run_coroutine_threadsafe(http.start(sock), loop).result(5)
    yield sock.getsockname(), recorder
    loop.call_soon_threadsafe(http.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, version: str) -> None:
        self.status, self.headers, self.body, self.version = status, headers, body, version

    def json(self) -> dict:
        return json.loads(self.body)


def read_response(stream: IO[bytes], head: bool = False) -> Response:
    """One response off a connection (several may follow each other on it)."""
    status_line = stream.readline()
    assert status_line, "connection closed before a response"
    version, status = status_line.split(b" ", 2)[:2]
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    return Response(int(status), headers, stream.read(length), version.decode())


def connect(address: tuple[str, int]) -> tuple[socket.socket, IO[bytes]]:
    sock = socket.create_connection(address, timeout=10)
    return sock, sock.makefile("rb")


def closed(sock: socket.socket, stream: IO[bytes]) -> bool:
    """The server closed the connection (nothing more to read)."""
    sock.settimeout(3)
    try:
        return stream.read(1) == b""
    except ConnectionResetError:
        return True


def eventually(check: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_request_as_the_handler_sees_it(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"POST /a%20b/c?x=1&x=2 HTTP/1.1\r\nHost: h\r\nX-Tag: one\r\nx-tag: two\r\n"
                 b"Content-Length: 5\r\n\r\nhello")
    reply = read_response(stream)
    seen = reply.json()
    assert reply.status == 200 and reply.version == "HTTP/1.1"
    assert (seen["method"], seen["path"], seen["query"], seen["version"]) == \
        ("POST", "/a%20b/c", "x=1&x=2", "1.1")
    assert seen["headers"] == [["host", "h"], ["x-tag", "one"], ["x-tag", "two"], ["content-length", "5"]]
    assert seen["body"] == "hello" and seen["peer"] == "127.0.0.1"
    assert reply.headers["content-length"] == str(len(reply.body))
    assert "date" in reply.headers and "connection" not in reply.headers  # HTTP/1.1: kept alive


def test_absolute_form_target(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"GET http://example.com/abs?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    seen = read_response(stream).json()
    assert (seen["path"], seen["query"]) == ("/abs", "q=1")


def test_keep_alive_serves_many_requests_on_one_connection(server) -> None:
    address, recorder = server
    sock, stream = connect(address)
    for i in range(20):
        sock.sendall(f"GET /n/{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        assert read_response(stream).json()["path"] == f"/n/{i}"
    assert len(recorder.seen) == 20


def test_pipelined_requests_are_answered_in_order(server) -> None:
    """The first request's handler is the slowest: its answer still comes first, and the
    requests are handled one after the other (as aiohttp did), not concurrently."""
    address, recorder = server
    sock, stream = connect(address)
    sock.sendall(b"GET /sleep/0.3 HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"POST /second HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"
                 b"GET /third HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    paths = [read_response(stream).json()["path"] for _ in range(3)]
    assert paths == ["/sleep/0.3", "/second", "/third"]
    assert recorder.finished == ["/sleep/0.3", "/second", "/third"]
    assert closed(sock, stream)


def test_chunked_request_body(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    for part in (b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"):
        sock.sendall(part)
        time.sleep(0.05)  # in separate segments: the body is put together across reads
    assert read_response(stream).json()["body"] == "hello world"


def test_http10_closes_unless_asked_to_keep_alive(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    reply = read_response(stream)
    assert reply.version == "HTTP/1.0" and reply.headers["connection"] == "keep-alive"
    sock.sendall(b"GET /once HTTP/1.0\r\n\r\n")
    reply = read_response(stream)
    assert reply.json()["version"] == "1.0" and "connection" not in reply.headers
    assert closed(sock, stream)


def test_connection_close_is_honoured(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"GET /bye HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert read_response(stream).headers["connection"] == "close"
    assert closed(sock, stream)


def test_head_has_the_length_but_no_body(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n")
    head = read_response(stream, head=True)
    assert head.status == 200 and int(head.headers["content-length"]) > 0
    assert read_response(stream).json()["path"] == "/after"  # no stray body bytes in between


def test_no_content_status_has_no_body(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"GET /empty HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n")
    reply = read_response(stream)
    assert reply.status == 204 and "content-length" not in reply.headers and reply.body == b""
    assert read_response(stream).json()["path"] == "/after"


def test_expect_continue_is_answered_before_the_body(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert stream.readline() == b"HTTP/1.1 100 Continue\r\n" and stream.readline() == b"\r\n"
    sock.sendall(b"data")
    assert read_response(stream).json()["body"] == "data"


def test_expect_continue_waits_for_earlier_answers(server) -> None:
    """A pipelined client reads answers in order: the interim answer to the second request must
    not come before the final answer to the first."""
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"GET /sleep/0.3 HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert read_response(stream).json()["path"] == "/sleep/0.3"
    assert stream.readline() == b"HTTP/1.1 100 Continue\r\n" and stream.readline() == b"\r\n"
    sock.sendall(b"data")
    assert read_response(stream).json()["body"] == "data"


def test_expect_continue_over_the_limit_is_refused_at_once(server) -> None:
    address, recorder = server
    sock, stream = connect(address)
    sock.sendall(f"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: {LIMIT + 1}\r\n"
                 "Expect: 100-continue\r\n\r\n".encode())
    reply = read_response(stream)
    assert reply.status == 413 and reply.json() == {"message": "too large"}
    assert closed(sock, stream) and recorder.seen == []


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_limit_is_refused_after_it_is_read(server, chunked: bool) -> None:
    """The client sends its whole body (8 MB: more than the socket buffers hold) before it reads:
    the body is read and dropped so that it gets the refusal, not a reset; then the connection
    closes."""
    address, recorder = server
    sock, stream = connect(address)
    body = b"b" * (8 * 1024 * 1024)
    if chunked:
        sock.sendall(b"POST /big HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    else:
        sock.sendall(b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    reply = read_response(stream)
    assert reply.status == 413 and reply.headers["connection"] == "close"
    assert closed(sock, stream) and recorder.seen == []


def test_body_far_over_the_limit_is_refused_at_once(server) -> None:
    address, recorder = server
    sock, stream = connect(address)
    sock.sendall(b"POST /huge HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (DISCARD + 1))
    assert read_response(stream).status == 413
    assert closed(sock, stream) and recorder.seen == []


def test_body_at_the_limit_is_served(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % LIMIT + b"a" * LIMIT)
    assert len(read_response(stream).json()["body"]) == LIMIT


@pytest.mark.parametrize("request_bytes", [
    b"BLAH\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: h\r\n\r\n",
    b"GET /no-host HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: nope\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: " + b"l" * (70 * 1024) + b"\r\n\r\n",
])
def test_malformed_request_is_refused_and_closed(server, request_bytes: bytes) -> None:
    address, recorder = server
    sock, stream = connect(address)
    sock.sendall(request_bytes)
    reply = read_response(stream)
    assert reply.status in (400, 431)
    assert closed(sock, stream) and recorder.seen == []


def test_answers_before_a_malformed_request_still_arrive(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"GET /sleep/0.2 HTTP/1.1\r\nHost: h\r\n\r\nBLAH\r\n\r\n")
    assert read_response(stream).json()["path"] == "/sleep/0.2"
    assert read_response(stream).status == 400
    assert closed(sock, stream)


def test_header_that_would_split_the_response_is_a_500(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"GET /inject HTTP/1.1\r\nHost: h\r\n\r\n")
    reply = read_response(stream)
    assert reply.status == 500 and "set-cookie" not in reply.headers
    assert closed(sock, stream)


def test_large_answer_to_a_slow_reader(server) -> None:
    address, _ = server
    sock, stream = connect(address)
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n")
    time.sleep(0.3)  # the server's write buffer fills up meanwhile
    reply = read_response(stream)
    assert reply.status == 200 and len(reply.body) == 8 * 1024 * 1024
    assert read_response(stream).json()["path"] == "/after"


def test_handler_runs_to_its_end_when_the_client_leaves(server) -> None:
    address, recorder = server
    sock, _ = connect(address)
    sock.sendall(b"GET /sleep/0.3 HTTP/1.1\r\nHost: h\r\n\r\n")
    eventually(lambda: recorder.seen == ["/sleep/0.3"])
    sock.close()
    eventually(lambda: recorder.finished == ["/sleep/0.3"])
    sock, stream = connect(address)  # and the server goes on serving
    sock.sendall(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    assert read_response(stream).json()["path"] == "/next"

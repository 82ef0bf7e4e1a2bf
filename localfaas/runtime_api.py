"""The Lambda Runtime API (2018-06-01), one endpoint per execution environment.

awslambdaric finds the API at a fixed path on `AWS_LAMBDA_RUNTIME_API`, so every environment
gets a listening socket of its own. Two of the three HTTP exchanges of every invocation happen
here (`/next` and `/response`), and the only client is the runtime interface client speaking
plain HTTP/1.1 on one keep-alive connection, so this is a small asyncio protocol rather than a
general web server: it costs a fraction of a full request/response cycle per exchange.

The endpoint declares what it calls (`RuntimeHandler`) and the execution environment implements
it, as LocalStack's executor endpoint does: the endpoint is opened for one handler and knows
nothing else of environments.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
from collections.abc import Callable
from typing import Protocol

from localfaas.aws import MAX_RESPONSE_BYTES
from localfaas.invocation import Invocation

PREFIX = b"/2018-06-01/runtime"
_NEXT = PREFIX + b"/invocation/next"
_INVOCATION = PREFIX + b"/invocation/"
_INIT_ERROR = PREFIX + b"/init/error"
_MAX_HEADER_BYTES = 64 * 1024
_REASONS = {200: b"OK", 202: b"Accepted", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found",
            413: b"Payload Too Large", 500: b"Internal Server Error"}
_ACCEPTED = b'{"status":"OK"}'


def _response(status: int, body: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"")),
             b"Content-Type: " + content_type.encode(),
             b"Content-Length: %d" % len(body)]
    lines += [f"{name}: {value}".encode() for name, value in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _error(status: int, error_type: str, message: str) -> bytes:
    return _response(status, json.dumps({"errorMessage": message, "errorType": error_type}).encode())


_ACCEPTED_RESPONSE = _response(202, _ACCEPTED)


NextAnswer = Callable[["Invocation | None"], None]


class RuntimeHandler(Protocol):
    """What the Runtime API asks of the execution environment behind it."""

    @property
    def function_arn(self) -> str: ...

    @property
    def initialized(self) -> bool:
        """The runtime has asked for its first invocation (its init phase is over)."""
        ...

    def current_request_id(self) -> str | None: ...

    def next_invocation(self, answer: NextAnswer) -> None:
        """The runtime's `/next` long-poll: call `answer` with the next invocation when there is
        one (at once if one is waiting), or with None if the environment is shutting down."""
        ...

    def forget_next(self, answer: NextAnswer) -> None:
        """The connection that asked for `answer` is gone: the next invocation is not for it."""
        ...

    def respond(self, body: bytes, content_type: str) -> None: ...

    def report_error(self, body: bytes) -> None: ...

    def report_init_error(self, body: bytes) -> None: ...

    def reject_oversized_response(self) -> None:
        """The response was over the limit: fail the invocation as Lambda does."""
        ...


class _Request:
    __slots__ = ("body", "content_type", "method", "path")

    def __init__(self, method: bytes, path: bytes, content_type: bytes | None, body: bytes) -> None:
        self.method, self.path, self.content_type, self.body = method, path, content_type, body


def _header(head: bytes, lowered: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lower-case, with CRLF before it and a colon after) in a
    request head, found in its lower-cased copy (same offsets) and cut from the original: the
    four headers the API reads cost four searches, not a parse of every header."""
    start = lowered.find(name)
    if start < 0:
        return None
    start += len(name)
    stop = head.find(b"\r\n", start)
    return head[start:stop if stop >= 0 else len(head)].strip()


class _Connection(asyncio.Protocol):
    """One runtime client connection. Requests are answered strictly in order, and in the
    callbacks that bring them: no task per request. Only `/next` waits, for an invocation; the
    requests pipelined behind it wait in `backlog` until it is answered."""

    def __init__(self, environment: RuntimeHandler) -> None:
        self.environment = environment
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.pending: _Request | None = None  # parsed headers, body still arriving
        self.pending_length = 0
        self.waiting = False  # a `/next` is waiting for an invocation
        self.backlog: collections.deque[_Request] = collections.deque()
        self.held = b""  # a 202 not written yet: it goes out with the next answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiting:
            self.waiting = False
            self.environment.forget_next(self._answer_next)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (request := self._parse_one()) is not None:
            if self.waiting or self.backlog:
                self.backlog.append(request)
            else:
                self._dispatch(request)

    def _parse_one(self) -> _Request | None:
        if self.pending is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEADER_BYTES:
                    self._fail(_error(400, "InvalidRequest", "request headers too large"))
                return None
            head = bytes(self.buffer[:end])
            del self.buffer[:end + 4]
            try:
                method, path, _version = head[:head.find(b"\r\n")].split(b" ", 2)
            except ValueError:
                self._fail(_error(400, "InvalidRequest", "malformed request line"))
                return None
            lowered = head.lower()
            if b"chunked" in (_header(head, lowered, b"\r\ntransfer-encoding:") or b"").lower():
                self._fail(_error(400, "InvalidRequest", "chunked bodies are not supported"))
                return None
            try:
                length = int(_header(head, lowered, b"\r\ncontent-length:") or 0)
            except ValueError:
                self._fail(_error(400, "InvalidRequest", "malformed Content-Length"))
                return None
            # A response somewhat over the limit is read, so that the invocation fails as Lambda's
            # does (Function.ResponseSizeTooLarge); one far over it is refused outright.
            if length > 4 * MAX_RESPONSE_BYTES:
                self._fail(_error(413, "RequestEntityTooLarge",
                                  f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."))
                return None
            self.pending = _Request(method, path.split(b"?", 1)[0],
                                    _header(head, lowered, b"\r\ncontent-type:"), b"")
            self.pending_length = length
            if (_header(head, lowered, b"\r\nexpect:") or b"").lower() == b"100-continue" and self.transport:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request, length = self.pending, self.pending_length
        if len(self.buffer) < length:
            return None
        request.body = bytes(self.buffer[:length])
        del self.buffer[:length]
        self.pending = None
        return request

    def _fail(self, response: bytes) -> None:
        self.buffer.clear()
        self.pending = None
        if self.transport is not None:
            self.transport.write(self.held + response)
            self.held = b""
            self.transport.close()

    def _write(self, response: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if response is _ACCEPTED_RESPONSE and (self.backlog or self.buffer):
            # A client that pipelined its next request (the lean client sends `/next` with its
            # result) reads this 202 only on its way to that request's answer: written with it,
            # the environment wakes once per invocation, not twice. Answers stay in order.
            self.held += response
            return
        if self.held:
            response, self.held = self.held + response, b""
        self.transport.write(response)

    def _dispatch(self, request: _Request) -> None:
        if request.path == _NEXT and request.method == b"GET":
            self.waiting = True
            self.environment.next_invocation(self._answer_next)  # may answer at once
        else:
            self._write(self._handle(request))

    def _answer_next(self, invocation: Invocation | None) -> None:
        self.waiting = False
        if invocation is None:
            self._write(_error(500, "Runtime.Unknown", "environment is shutting down"))
        else:
            headers = {
                "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": self.environment.function_arn,
                "Lambda-Runtime-Trace-Id": invocation.trace_id,
            }
            if invocation.client_context:
                headers["Lambda-Runtime-Client-Context"] = invocation.client_context
            self._write(_response(200, invocation.payload, headers, invocation.content_type))
        while self.backlog and not self.waiting and self.transport is not None:
            self._dispatch(self.backlog.popleft())

    def _handle(self, request: _Request) -> bytes:
        environment = self.environment
        path, method = request.path, request.method
        if path.startswith(_INVOCATION) and method == b"POST":
            request_id, _, action = path[len(_INVOCATION):].decode("latin-1").partition("/")
            refusal = self._refusal(request_id)
            if refusal is not None:
                return refusal
            if action == "response":
                if len(request.body) > MAX_RESPONSE_BYTES:
                    environment.reject_oversized_response()
                    return _error(413, "RequestEntityTooLarge",
                                  f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).")
                content_type = (request.content_type or b"application/json").decode("latin-1")
                environment.respond(request.body, content_type)
                return _ACCEPTED_RESPONSE
            if action == "error":
                environment.report_error(request.body)
                return _ACCEPTED_RESPONSE
        if path == _INIT_ERROR and method == b"POST":
            if environment.initialized:
                return _error(403, "InvalidStateTransition", "init/error after init finished")
            environment.report_init_error(request.body)
            return _ACCEPTED_RESPONSE
        return _error(404, "NotFound", f"no such Runtime API path: {method.decode()} {path.decode()}")

    def _refusal(self, request_id: str) -> bytes | None:
        current = self.environment.current_request_id()
        if current == request_id:
            return None
        if current is None:
            return _error(403, "InvalidStateTransition",
                          "State transition from Ready to InvocationResponse failed for runtime")
        return _error(400, "InvalidRequestID", "Invalid request ID")


class RuntimeEndpoint:
    """The Runtime API of one execution environment: a socket on 127.0.0.1 of its own."""

    def __init__(self, server: asyncio.Server, port: int) -> None:
        self._server = server
        self.port = port

    @classmethod
    async def open(cls, handler: RuntimeHandler) -> RuntimeEndpoint:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        server = await asyncio.get_running_loop().create_server(lambda: _Connection(handler), sock=sock)
        return cls(server, sock.getsockname()[1])

    @property
    def address(self) -> str:
        """As the runtime finds it in AWS_LAMBDA_RUNTIME_API: host:port, no scheme."""
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.close()

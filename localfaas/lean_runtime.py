"""A lean runtime interface client: `python -m localfaas.lean_runtime <handler>`, a drop-in for
`python -m awslambdaric <handler>` in a localfaas execution environment (`--runtime-client lean`).

What the handler sees is awslambdaric's own doing: this module hands awslambdaric's `bootstrap.run`
(the init, the handler's import and its init errors, the logging set-up, the LambdaContext, the
`_X_AMZN_TRACE_ID` variable, the marshalling, the error documents and their log lines) a client of
its own for the one part it replaces, the transport to the Runtime API. awslambdaric's transport
is a C extension over libcurl, and from python3.12 on (`AWS_EXECUTION_ENV`) it runs every `/next`
in a new ThreadPoolExecutor, so that signals reach the main thread while it waits: a thread
started and joined per invocation. Here every request goes over ONE keep-alive HTTP/1.1
connection, a plain blocking socket in the main thread, with just the parsing the Runtime API's
answers need (a status line, headers, a Content-Length body).

The `/response` (or `/error`) of an invocation and the `/next` that follows it go out in ONE write,
pipelined (HTTP/1.1 allows it; the answers come back in order): awslambdaric's bootstrap asks for
the next invocation right after it posted a result, so the `/next` can leave with it. That is one
send and, on the Runtime API's side, one wake-up less per invocation; localfaas's Runtime API
also holds the 202 for a result with a `/next` behind it and writes it with that `/next`'s answer,
so the environment wakes once per invocation instead of twice. The 202 is still read and checked
(a result not answered 202 ends the runtime, as with awslambdaric) before the post returns.

Signals: the wait for `/next` is a `recv` in the main thread. Python retries a `recv` interrupted
by a signal after running the signal's Python handler (PEP 475), so a handler the function
installs (say for SIGTERM) runs while the environment waits, as with awslambdaric's thread; if
that handler raises, the exception ends the runtime as any uncaught one does. Signals left at
their defaults act as the defaults do (SIGTERM ends the process; SIGINT raises KeyboardInterrupt,
which ends it). awslambdaric's python3.11 mode, by contrast, waits inside C and runs a Python
signal handler only once the next invocation has arrived.

The wire is what awslambdaric 4.x sends (checked with a capturing server): `/response` with
`Content-Type` application/json (application/unknown for bytes); `/error` with Content-Type
application/json and `Lambda-Runtime-Function-XRay-Error-Cause`, and no
`Lambda-Runtime-Function-Error-Type` header (awslambdaric sends that on `/init/error` only, and
there no User-Agent: it posts it with http.client); a
`/response` or `/error` that is not answered 202 ends the runtime with RuntimeError, as
awslambdaric's does. Not supported: Lambda Managed Instances' multi-concurrent mode
(`AWS_LAMBDA_MAX_CONCURRENCY`), which localfaas never sets.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from awslambdaric import bootstrap
from awslambdaric.lambda_runtime_client import (
    InvocationRequest,
    LambdaRuntimeClient,
    LambdaRuntimeClientError,
    _user_agent,
)
from awslambdaric.lambda_runtime_exception import FaultException
from awslambdaric.lambda_runtime_marshaller import to_json

_PREFIX = "/2018-06-01/runtime"
NEXT_PATH = _PREFIX + "/invocation/next"
_MAX_HEADER_BYTES = 64 * 1024
_MAX_XRAY_HEADER_BYTES = 1024 * 1024  # awslambdaric drops the X-Ray cause header from 1 MiB on
_RECV_BYTES = 256 * 1024
_ACCEPTED_BODY = b'{"status":"OK"}'
_ACCEPTED = (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
             + _ACCEPTED_BODY)  # what localfaas's Runtime API answers a result with (runtime_api.py)
_MAX_RECV_BYTES = 4 * 1024 * 1024  # a payload may be 6 MB: read it in a few large pieces


class RuntimeApiError(ConnectionError):
    """The Runtime API's connection broke, or it answered something that is not HTTP/1.1."""


class Connection:
    """One keep-alive HTTP/1.1 connection to the Runtime API, used by one thread at a time."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._address = (host or "127.0.0.1", int(port))
        self._host_header = address.encode("latin-1")
        self._user_agent = _user_agent().encode("latin-1")
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._recv_view = memoryview(bytearray(_RECV_BYTES))
        self.next_sent = False  # a pipelined `/next` is on this connection, its answer not read yet
        self._next_request = b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\n\r\n" % (
            NEXT_PATH.encode(), self._host_header, self._user_agent)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection(self._address)
            # Every request is one sendall; without this a small write may wait for a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock, self._buffer = sock, b""
        return self._sock

    def close(self) -> None:
        self.next_sent = False  # a request sent ahead is lost with its connection: sent again
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                user_agent: bool = True, then_next: bool = False) -> tuple[int, dict[str, str], bytes]:
        """Send one request and read its answer: (status, headers with lower-case names, body).
        `then_next`: a GET `/next` goes out in the same write; read its answer with next()."""
        head = [b"%s %s HTTP/1.1" % (method.encode(), path.encode("latin-1")), b"Host: " + self._host_header]
        if user_agent:
            head.append(b"User-Agent: " + self._user_agent)
        if method != "GET":
            head.append(b"Content-Length: %d" % len(body))
        head += [f"{name}: {value}".encode("latin-1") for name, value in (headers or {}).items()]
        data = b"\r\n".join(head) + b"\r\n\r\n" + body
        if then_next:
            data += self._next_request
        return self._exchange(data, then_next)

    def next(self) -> tuple[int, dict[str, str], bytes]:
        """The answer to GET `/next`: the pipelined one's if one was sent, else a new request's."""
        if self.next_sent:
            self.next_sent = False
            return self._exchange(b"", False)
        return self._exchange(self._next_request, False)

    def _exchange(self, data: bytes, then_next: bool) -> tuple[int, dict[str, str], bytes]:
        sock = self._connect()
        try:
            if data:
                # One write per request (headers and body together) keeps it one segment when small.
                sock.sendall(data)
                self.next_sent = then_next
            status, answer_headers, answer = self._read_response(sock)
        except BaseException:
            self.close()  # half an exchange leaves the connection in an unknown state
            raise
        if answer_headers.get("connection", "").lower() == "close":
            self.close()  # and with it any request sent ahead, which next() sends again
        return status, answer_headers, answer

    def _read_response(self, sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > _MAX_HEADER_BYTES:
                raise RuntimeApiError("the Runtime API's response headers are too large")
            # The long poll: signals run their handlers in here. Into a buffer kept for it: a
            # recv(256 KiB) would have malloc mmap and unmap 256 KiB on every call.
            received = sock.recv_into(self._recv_view)
            chunk = self._recv_view[:received].tobytes()
            if not chunk:
                raise RuntimeApiError("the Runtime API closed the connection")
            buffer += chunk
        if buffer.startswith(_ACCEPTED):  # localfaas's 202, byte for byte: nothing to parse
            self._buffer = buffer[len(_ACCEPTED):]
            return 202, {}, _ACCEPTED_BODY
        status_line, _, head = buffer[:end].decode("latin-1").partition("\r\n")
        rest = buffer[end + 4:]
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise RuntimeApiError(f"not an HTTP/1.1 response: {status_line[:100]!r}")
        headers: dict[str, str] = {}
        for line in head.split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()  # no space may precede the colon (RFC 9112 5.1)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise RuntimeApiError("chunked responses are not supported (the Runtime API sends lengths)")
        length = int(headers.get("content-length", "0") or 0)
        if len(rest) < length:
            pieces, have = [rest], len(rest)
            while have < length:
                chunk = sock.recv(min(length - have, _MAX_RECV_BYTES))  # a bounded buffer
                if not chunk:
                    raise RuntimeApiError("the Runtime API closed the connection mid-body")
                pieces.append(chunk)
                have += len(chunk)
            rest = b"".join(pieces)
        self._buffer = rest[length:]
        return int(parts[1]), headers, rest[:length]


class LeanRuntimeClient(LambdaRuntimeClient):
    """awslambdaric's client (its marshaller, its error handling) with a socket transport.
    A subclass of awslambdaric's own, so that a marshaller a function sets on
    `LambdaRuntimeClient.marshaller` is used here too."""

    def __init__(self, lambda_runtime_address: str) -> None:
        super().__init__(lambda_runtime_address, use_thread_for_polling_next=False)
        self.connection = Connection(lambda_runtime_address)

    def call_rapid(self, http_method: str, endpoint: str, expected_http_code: int,
                   payload: Any = None, headers: dict[str, str] | None = None) -> None:
        # awslambdaric's own opens a new http.client connection for these (init/error, restore),
        # which sends no User-Agent: neither does this.
        body = b"" if http_method == "GET" else to_json(payload).encode("utf-8")
        status, _, answer = self.connection.request(http_method, endpoint, body, headers, user_agent=False)
        if status != expected_http_code:
            raise LambdaRuntimeClientError(endpoint, status, answer)

    def wait_next_invocation(self) -> InvocationRequest:
        try:
            status, headers, body = self.connection.next()
            if status != 200:
                raise LambdaRuntimeClientError("/runtime/invocation/next", status, body)
            deadline = headers.get("lambda-runtime-deadline-ms")
            return InvocationRequest(
                invoke_id=headers.get("lambda-runtime-aws-request-id"),
                x_amzn_trace_id=headers.get("lambda-runtime-trace-id"),
                invoked_function_arn=headers.get("lambda-runtime-invoked-function-arn"),
                deadline_time_in_ms=int(deadline) if deadline else 0,
                client_context=headers.get("lambda-runtime-client-context"),
                cognito_identity=headers.get("lambda-runtime-cognito-identity"),
                tenant_id=headers.get("lambda-runtime-aws-tenant-id"),
                content_type=headers.get("content-type"),
                event_body=body,
                invocation_id=headers.get("lambda-runtime-invocation-id"),
            )
        except Exception as exc:  # as awslambdaric's python3.12 mode reports it
            raise FaultException(FaultException.LAMBDA_RUNTIME_CLIENT_ERROR,
                                 f"LAMBDA_RUNTIME Failed to get next invocation: {exc}", None) from exc

    def post_invocation_result(self, invoke_id: str, result_data: bytes | str,
                               content_type: str = "application/json",
                               invocation_id: str | None = None) -> None:
        body = result_data if isinstance(result_data, bytes) else result_data.encode("utf-8")
        status, _, _ = self.connection.request(
            "POST", f"{_PREFIX}/invocation/{invoke_id}/response", body, {"Content-Type": content_type},
            then_next=True)  # bootstrap.run asks for the next invocation right after this
        if status != 202:
            raise RuntimeError("Failed to post invocation response")

    def post_invocation_error(self, invoke_id: str, error_response_data: str, xray_fault: str,
                              invocation_id: str | None = None) -> None:
        headers = {"Content-Type": "application/json"}
        if xray_fault and len(xray_fault.encode()) < _MAX_XRAY_HEADER_BYTES:
            headers["Lambda-Runtime-Function-XRay-Error-Cause"] = xray_fault
        status, _, _ = self.connection.request(
            "POST", f"{_PREFIX}/invocation/{invoke_id}/error", error_response_data.encode("utf-8"),
            headers, then_next=True)
        if status != 202:
            raise RuntimeError("Failed to post invocation error")


def main(args: list[str]) -> None:
    """As `python -m awslambdaric HANDLER`: the handler from the first argument, the Runtime API
    from AWS_LAMBDA_RUNTIME_API; never returns (bootstrap.run loops, or exits on init errors)."""
    if len(args) < 2:
        raise ValueError("Handler not set")
    bootstrap.run(args[1], LeanRuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"]))


__all__ = ["Connection", "LeanRuntimeClient", "RuntimeApiError", "main"]

if __name__ == "__main__":
    main(sys.argv)

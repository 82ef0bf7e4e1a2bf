"""A lean keep-alive HTTP/1.1 client for one origin: what the producer needs to call the
supervisor's function URL, and no more.

The producer makes one such call per submission, so the request is one buffer written with one
sendall (no Nagle/delayed-ACK wait, one segment when small), and the response is parsed with a few
splits: no http.client, no email.feedparser, no urllib3 pool (which cost as much CPU as the rest of
the producer's work). Responses framed by Content-Length (as localfaas's URL server and Lambda's
buffered function URLs send them), chunked, or by the end of the connection are all read.

Connections are kept per client and reused, one request at a time each (an idle one is taken from
a list, so threads do not share one). Failures:
- connect, send and each read have a timeout; any transport failure, timeout or malformed
  response raises TransportError, and the connection is dropped (half an exchange leaves it in
  an unknown state);
- a reused connection the server has closed while it was idle (a keep-alive timeout, a restart)
  is noticed before sending (it reads as ready: EOF or a reset) and replaced by a new one; if the
  send itself fails on a reused connection, the request is sent once more on a new one: the
  server cannot have acted on a request it did not receive whole, and a failed send means it did
  not. Once a request was sent whole, nothing is re-sent: a connection that then fails may have
  carried a request the server acted on (a POST the supervisor admitted), and sending it again
  would act twice; the caller gets TransportError and decides (the producer answers 503)."""

from __future__ import annotations

import select
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024  # status line and headers
_RECV_BYTES = 64 * 1024
_NO_BODY = frozenset({204, 304})


class TransportError(Exception):
    """The request got no complete HTTP response: connection refused or lost, a timeout, or
    something that is not HTTP/1.x."""


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class Client:
    """Requests to one origin (`base_url`'s scheme, host and port) over keep-alive connections."""

    def __init__(self, base_url: str, connect_timeout: float, read_timeout: float,
                 ssl_context: Any = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = parts.scheme == "https"
        self.address = (parts.hostname, parts.port or (443 if self.tls else 80))
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._ssl_context = ssl_context
        self._idle: list[_Connection] = []

    def request(self, method: str, target: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        """Send `method target` with `headers` (Host included: the caller signs what is sent)
        and `body`, and read the whole response."""
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        connection = None
        while self._idle:  # pop() and append() are atomic: no two threads get the same one
            candidate = self._idle.pop()
            if candidate.alive():
                connection = candidate
                break
            candidate.close()
        if connection is not None:
            try:
                connection.sock.sendall(data)
            except OSError:
                connection.close()  # it died as we sent: the request did not get there whole
                connection = None
        if connection is None:
            connection = self._connect()
            try:
                connection.sock.sendall(data)
            except OSError as error:
                connection.close()
                raise TransportError(f"sending to {self._origin()} failed: {error!r}") from error
        try:
            response, reusable = connection.read_response(method)
        except (OSError, ValueError) as error:
            connection.close()
            raise TransportError(f"no response from {self._origin()}: {error!r}") from error
        if reusable:
            self._idle.append(connection)
        else:
            connection.close()
        return response

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _connect(self) -> _Connection:
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        except OSError as error:
            raise TransportError(f"cannot connect to {self._origin()}: {error!r}") from error
        try:
            # A request is one sendall: without this a small one could wait for a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                sock = self._tls(sock)
            sock.settimeout(self.read_timeout)  # each send and recv from here on
        except OSError as error:
            sock.close()
            raise TransportError(f"cannot connect to {self._origin()}: {error!r}") from error
        return _Connection(sock)

    def _tls(self, sock: socket.socket) -> socket.socket:
        if self._ssl_context is None:
            import ssl  # only a Lambda's https URL needs it; not loaded at every cold start

            self._ssl_context = ssl.create_default_context()
        return self._ssl_context.wrap_socket(sock, server_hostname=self.address[0])

    def _origin(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


class _Connection:
    __slots__ = ("poller", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)

    def alive(self) -> bool:
        """An idle connection has nothing to read: readable means EOF, a reset, or bytes no
        request asked for; none of those can carry another request."""
        return not self.poller.poll(0)

    def close(self) -> None:
        self.sock.close()

    def read_response(self, method: str) -> tuple[Response, bool]:
        """The response, and whether the connection can take another request."""
        buffer = b""
        while True:
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise ValueError("response headers too large")
                buffer += self._recv()
            lines = buffer[:end].decode("latin-1").split("\r\n")
            buffer = buffer[end + 4:]
            version, _, rest = lines[0].partition(" ")
            status = int(rest[:3])
            if not version.startswith("HTTP/1.") or rest[3:4] not in ("", " "):
                raise ValueError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
            if status >= 200:
                break
            # 1xx before the response (100 Continue unasked for, 103 Early Hints): skipped.
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = version != "HTTP/1.0" and "close" not in headers.get("connection", "").lower()
        if method == "HEAD" or status in _NO_BODY:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, buffer = self._chunked(buffer)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length < 0:
                raise ValueError("negative Content-Length")
            buffer = self._at_least(buffer, length)
            body, buffer = buffer[:length], buffer[length:]
        else:  # framed by the end of the connection
            pieces = [buffer]
            while chunk := self.sock.recv(_RECV_BYTES):
                pieces.append(chunk)
            body, buffer, keep = b"".join(pieces), b"", False
        # Bytes past the response were not asked for: the connection is not fit for another.
        return Response(status, headers, body), keep and not buffer

    def _recv(self) -> bytes:
        chunk = self.sock.recv(_RECV_BYTES)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def _at_least(self, buffer: bytes, size: int) -> bytes:
        if len(buffer) >= size:
            return buffer
        pieces, have = [buffer], len(buffer)
        while have < size:
            chunk = self._recv()
            pieces.append(chunk)
            have += len(chunk)
        return b"".join(pieces)

    def _line(self, buffer: bytes) -> tuple[bytes, bytes]:
        while (end := buffer.find(b"\r\n")) < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise ValueError("chunk header too long")
            buffer += self._recv()
        return buffer[:end], buffer[end + 2:]

    def _chunked(self, buffer: bytes) -> tuple[bytes, bytes]:
        pieces = []
        while True:
            line, buffer = self._line(buffer)
            size = int(line.split(b";", 1)[0], 16)  # chunk extensions ignored
            if size == 0:
                break
            buffer = self._at_least(buffer, size + 2)
            if buffer[size:size + 2] != b"\r\n":
                raise ValueError("chunk not followed by CRLF")
            pieces.append(buffer[:size])
            buffer = buffer[size + 2:]
        while True:  # trailer fields, up to the empty line
            line, buffer = self._line(buffer)
            if not line:
                return b"".join(pieces), buffer

"""A lean HTTP/1.1 server: an asyncio protocol parsing with httptools (llhttp), for function URLs.

Every function-URL invocation crosses this server twice (the request in, the response out), so it
does only what an HTTP/1.1 origin server must: keep-alive (HTTP/1.0 too when asked for),
pipelined requests answered strictly in order, chunked request bodies, `Expect: 100-continue`,
a body limit answered with a reply of the caller's choosing, HEAD and the statuses without a
body, `Date`, one `transport.write` per response. What a request means is the handler's business:
it gets an `HttpRequest` (the whole body read) and returns an `HttpReply`.

A handler is not cancelled when its client goes away: an invocation that started runs to its end,
as it would behind Lambda's front end, and its answer is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus

import httptools

_log = logging.getLogger("localfaas.http")

MAX_HEAD_BYTES = 64 * 1024  # request line and headers
MAX_QUEUED = 16  # complete pipelined requests held per connection before reading pauses

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_BODILESS = frozenset({204, 304})  # and 1xx: no body and no Content-Length (RFC 9110 8.6)
_OWN_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpRequest:
    """One request as it arrived: `path` and `query` are the raw (still percent-encoded) text of
    the request target, header names are lower-cased, in arrival order, repeats kept."""

    __slots__ = ("body", "headers", "method", "path", "peer", "query", "version")

    def __init__(self, method: str, path: str, query: str, version: str,
                 headers: list[tuple[str, str]], body: bytes, peer: str) -> None:
        self.method, self.path, self.query, self.version = method, path, query, version
        self.headers, self.body, self.peer = headers, body, peer

    def header(self, name: str) -> str | None:
        """The first value of a header (`name` lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class HttpReply:
    """A response: `headers` as they are sent (the server adds Content-Length, Date, Connection,
    and Content-Type application/octet-stream for a body of no stated type)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers if headers is not None else []


Handler = Callable[[HttpRequest], Awaitable[HttpReply]]


class _Date:
    """The `Date` header's value, formatted once a second (formatting costs more than the rest
    of a response's head)."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True).encode()
        return cls.value


def render(reply: HttpReply, version: str, keep_alive: bool, head_only: bool = False) -> bytes:
    """The response's bytes. Raises ValueError for a header that would break the framing (a CR or
    LF in it): that is the handler's bug, and the server answers 500 instead."""
    status = reply.status
    lines = [b"HTTP/%s %d %s" % (version.encode(), status, _REASONS.get(status, b""))]
    typed = dated = False
    for name, value in reply.headers:
        lower = name.lower()
        if lower in _OWN_HEADERS:
            continue  # framing is the server's: a function's Content-Length could only break it
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ValueError(f"header {name!r} cannot be sent")
        typed = typed or lower == "content-type"
        dated = dated or lower == "date"
        lines.append(f"{name}: {value}".encode())
    body = reply.body
    if status in _BODILESS or status < 200:
        body = b""
    else:
        if body and not typed:
            lines.append(b"Content-Type: application/octet-stream")
        lines.append(b"Content-Length: %d" % len(body))
        if head_only:
            body = b""
    if not dated:
        lines.append(b"Date: " + _Date.now())
    if not keep_alive:
        if version == "1.1":
            lines.append(b"Connection: close")
    elif version == "1.0":
        lines.append(b"Connection: keep-alive")
    lines.append(b"")
    lines.append(body)
    return b"\r\n".join(lines)


def _error(status: int, text: str) -> bytes:
    return render(HttpReply(status, text.encode(), [("Content-Type", "text/plain; charset=utf-8")]),
                  "1.1", keep_alive=False)


class _Refused(Exception):
    """Raised from a parser callback: the request cannot be served; the connection ends with it."""

    def __init__(self, response: bytes) -> None:
        super().__init__()
        self.response = response


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.handler = server.handler
        self.max_body = server.max_body
        self.discard_limit = server.discard_limit
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = "127.0.0.1"
        self.queue: collections.deque[tuple[HttpRequest, bool]] = collections.deque()
        self.busy = False  # a task is answering the queue
        self.ignoring = False  # no more requests are read: the connection ends after the queue
        self.final: bytes | None = None  # the answer that ends the connection, after the queue's
        self.continue_owed = False
        self.reading_paused = False
        self.drained: asyncio.Future[None] | None = None  # set while the write buffer is full
        # The request being parsed.
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.discarding = False  # its body is over the limit: read and dropped

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = peer[0]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.ignoring = True
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    def data_received(self, data: bytes) -> None:
        if self.ignoring:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades: what follows the request is not HTTP; answer it and close.
            self.ignoring = True
            if self.queue:
                self.queue[-1] = (self.queue[-1][0], False)
            elif not self.busy:
                self._end(_error(400, "Bad Request: protocol upgrades are not supported"))
        except httptools.HttpParserCallbackError as error:
            refusal = error.__context__
            self._end(refusal.response if isinstance(refusal, _Refused) else _error(400, "Bad Request"))
        except httptools.HttpParserError as error:
            self._end(_error(400, f"Bad Request: {error}"))

    # -- parser callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body, self.size, self.discarding = b"", [], [], 0, False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.size += len(url)
        if self.size > MAX_HEAD_BYTES:
            raise _Refused(_error(431, "Request Header Fields Too Large"))

    def on_header(self, name: bytes, value: bytes) -> None:
        # Values as aiohttp (and so the event before this server) decoded them: UTF-8, with any
        # other byte kept as a lone surrogate.
        self.headers.append((name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape")))
        self.size += len(name) + len(value) + 4
        if self.size > MAX_HEAD_BYTES:
            raise _Refused(_error(431, "Request Header Fields Too Large"))

    def on_headers_complete(self) -> None:
        self.size = 0  # from here on: the body's size
        parser = self.parser
        version = parser.get_http_version()
        length = expect = None
        has_host = False
        for name, value in self.headers:
            if name == "content-length":
                length = int(value)  # llhttp has checked it is a number
            elif name == "expect":
                expect = value.lower()
            elif name == "host":
                has_host = True
        if version == "1.1" and not has_host:
            raise _Refused(_error(400, "Bad Request: missing Host header"))
        if length is not None and length > self.max_body:
            if expect == "100-continue" or length > self.discard_limit:
                raise _Refused(self.server.too_large)  # the client waits, or the body is absurd
            self._refuse_body()
        elif expect == "100-continue" and version == "1.1":
            self.continue_owed = True
            self._send_continue()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.discarding:
            if self.size > self.discard_limit:
                raise _Refused(self.server.too_large)
            return
        if self.size > self.max_body:
            self.body = []
            self._refuse_body()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.continue_owed = False
        if self.discarding:
            self.ignoring = True
            self._finish()
            return
        target = self.url
        if target[:1] == b"/":
            path, _, query = target.partition(b"?")
            path = path.partition(b"#")[0]
            query = query.partition(b"#")[0]
        else:  # absolute form (or garbage, which parse_url refuses)
            try:
                url = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                raise _Refused(_error(400, "Bad Request: invalid request target")) from None
            path, query = url.path or b"/", url.query or b""
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        request = HttpRequest(self.parser.get_method().decode("latin-1"), path.decode("latin-1"),
                              query.decode("latin-1"), self.parser.get_http_version(),
                              self.headers, body, self.peer)
        keep_alive = self.parser.should_keep_alive()
        self.queue.append((request, keep_alive))
        if not keep_alive:
            self.ignoring = True
        if len(self.queue) >= MAX_QUEUED and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._answer())

    # -- answering --------------------------------------------------------------------------------

    def _refuse_body(self) -> None:
        """The body is over the limit: read it to its end and drop it, then refuse and close."""
        self.discarding = True
        self.final = self.server.too_large

    def _end(self, response: bytes) -> None:
        """No more requests on this connection: `response` follows the answers already queued."""
        self.ignoring = True
        self.final = response
        self._finish()

    def _finish(self) -> None:
        """Once nothing is being answered: end the connection if it is to end."""
        if self.busy or not self.ignoring or self.transport is None or self.transport.is_closing():
            return
        if self.final is not None:
            self.transport.write(self.final)
        self.transport.close()

    def _send_continue(self) -> None:
        # Only once every earlier answer is out: a pipelined client reads answers in order.
        if self.continue_owed and not self.busy and self.transport is not None:
            self.continue_owed = False
            self.transport.write(_CONTINUE)

    async def _answer(self) -> None:
        transport = self.transport
        assert transport is not None
        try:
            while self.queue:
                request, keep_alive = self.queue.popleft()
                if self.reading_paused and len(self.queue) < MAX_QUEUED // 2:
                    self.reading_paused = False
                    transport.resume_reading()
                try:
                    reply = await self.handler(request)
                    response = render(reply, request.version, keep_alive, request.method == "HEAD")
                except Exception:
                    _log.exception("localfaas: function URL handler failed on %s %s",
                                   request.method, request.path)
                    response, keep_alive = _error(500, "Internal Server Error"), False
                if transport.is_closing():
                    return
                transport.write(response)
                if not keep_alive:
                    transport.close()
                    return
                if self.drained is not None:
                    await self.drained
        finally:
            self.busy = False
        self._finish()
        self._send_continue()


class HttpServer:
    """One listening socket served by `handler`. Bodies over `max_body` bytes are answered with
    `too_large` (a whole response, the connection closing after it) and never reach the handler.
    Such a body is read and dropped up to `discard_limit` bytes (4 x max_body by default) before
    the answer: a client sends its whole body before it reads, and a connection closed on unread
    data is reset, which it would see instead of the refusal."""

    def __init__(self, handler: Handler, max_body: int, too_large: HttpReply,
                 discard_limit: int | None = None) -> None:
        self.handler = handler
        self.max_body = max_body
        self.discard_limit = discard_limit if discard_limit is not None else 4 * max_body
        self.too_large = render(too_large, "1.1", keep_alive=False)
        self.connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()

"""taskcore.httpclient, the producer's HTTP/1.1 client, against real servers on real sockets:
localfaas's function-URL server (what the supervisor's URL is served by) and a scripted server
for what that one never does (chunked bodies, a body framed by the connection's end, a keep-alive
connection closed while idle, a request read and never answered, a response too slow)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from localfaas import sigv4
from localfaas.http11 import HttpReply, HttpRequest, HttpServer
from taskcore.errors import Unavailable
from taskcore.httpclient import Client, TransportError
from taskcore.producer import SupervisorClient
from taskcore.settings import Settings
from taskcore.signing import Signer

KEY, SECRET = "AKIDCLIENTTEST", "client-test-secret"


# localfaas's URL server -------------------------------------------------------------------------

@pytest.fixture
def url_server() -> Iterator[tuple[str, list[HttpRequest]]]:
    """localfaas.http11's server with a handler that echoes what it got and checks its signature."""
    seen: list[HttpRequest] = []

    async def handler(request: HttpRequest) -> HttpReply:
        seen.append(request)
        if request.path == "/empty":
            return HttpReply(204)
        if request.path == "/big":
            return HttpReply(200, b"z" * (3 * 1024 * 1024 + 7))
        headers = dict(request.headers)
        try:
            caller = sigv4.verify(request.method, request.path, request.query, headers, request.body,
                                  {KEY: SECRET}, "us-east-1").access_key
        except sigv4.Refused as refused:
            caller = f"refused: {refused}"
        document = {"path": request.path, "peer": request.peer, "caller": caller,
                    "body": request.body.decode("latin-1"), "task_id": "t1", "status": "queued"}
        return HttpReply(202, json.dumps(document).encode(), [("Content-Type", "application/json")])

    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    http = HttpServer(handler, 1_000_000, HttpReply(413, b"{}"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    asyncio.run_coroutine_threadsafe(http.start(sock), loop).result(5)
    host, port = sock.getsockname()
    yield f"http://{host}:{port}/", seen
    loop.call_soon_threadsafe(http.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_keep_alive_with_the_url_server(url_server) -> None:
    url, seen = url_server
    client = Client(url, 2, 5)
    first = client.request("POST", "/a", {"Host": "h"}, b"one")
    second = client.request("POST", "/b", {"Host": "h"}, b"two")
    assert (first.status, second.status) == (202, 202)
    assert json.loads(first.body)["body"] == "one" and json.loads(second.body)["body"] == "two"
    assert first.headers["content-type"] == "application/json"
    assert json.loads(first.body)["peer"] == json.loads(second.body)["peer"]  # one connection
    empty = client.request("GET", "/empty", {"Host": "h"})
    big = client.request("GET", "/big", {"Host": "h"})
    assert (empty.status, empty.body) == (204, b"")
    assert big.status == 200 and big.body == b"z" * (3 * 1024 * 1024 + 7)
    assert len({request.peer for request in seen}) == 1


def test_the_supervisor_client_sends_what_it_signed(url_server) -> None:
    url, seen = url_server
    supervisor = SupervisorClient(Settings(supervisor_url=url), Signer(KEY, SECRET, "us-east-1", "tok"))
    for body in (b'{"type": "hash"}', b'{"tasks": []}'):
        reply = supervisor.supervise(body)
        assert reply.status == 202 and not reply.refused
        assert reply.body["caller"] == KEY and reply.body["body"] == body.decode()
    assert [request.path for request in seen] == ["/supervise", "/supervise"]
    assert dict(seen[0].headers)["content-type"] == "application/json"
    wrong = SupervisorClient(Settings(supervisor_url=url), Signer(KEY, "not-the-secret", "us-east-1"))
    assert wrong.supervise(b"{}").body["caller"].startswith("refused: The request signature")


# A scripted server -------------------------------------------------------------------------------

class Peer:
    """The server's end of one connection."""

    def __init__(self, sock: socket.socket, number: int, server: Scripted) -> None:
        self.sock, self.number, self.server, self.buffer = sock, number, server, b""

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_request(self) -> bytes:
        """One whole request (Content-Length framed), recorded; b"" if the client closed."""
        buffer = self.buffer
        while b"\r\n\r\n" not in buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buffer = rest[length:]
        self.server.requests.append((self.number, head + b"\r\n\r\n" + rest[:length]))
        return head


Script = Callable[[Peer], object]


class Scripted:
    """A server that runs `scripts[i]` on its i-th connection (the last one for any later) and
    records every request it read, whole, with the connection's number."""

    def __init__(self, scripts: list[Script], tls: ssl.SSLContext | None = None) -> None:
        self.scripts, self.tls = scripts, tls
        self.requests: list[tuple[int, bytes]] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            number = self.connections
            self.connections += 1
            script = self.scripts[min(number, len(self.scripts) - 1)]
            threading.Thread(target=self._run, args=(script, Peer(sock, number, self)), daemon=True).start()

    def _run(self, script: Script, peer: Peer) -> None:
        try:
            if self.tls is not None:
                peer.sock = self.tls.wrap_socket(peer.sock, server_side=True)
            script(peer)
        except OSError:  # ssl.SSLError too: a client that refused our certificate
            pass
        finally:
            peer.sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def scripted() -> Iterator[Callable[[list[Script]], Scripted]]:
    servers: list[Scripted] = []

    def start(scripts: list[Script], tls: ssl.SSLContext | None = None) -> Scripted:
        servers.append(Scripted(scripts, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def answer(status: int = 200, body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


def keep_answering(peer: Peer) -> None:
    while peer.read_request():
        peer.sendall(answer(body=b"answer %d" % len(peer.server.requests)))


def test_chunked_response_and_keep_alive_after_it(scripted) -> None:
    def chunked(peer: Peer) -> None:
        peer.read_request()
        # Split across writes, with a chunk extension and a trailer, as a streaming server may.
        peer.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel")
        time.sleep(0.05)
        peer.sendall(b"lo\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        keep_answering(peer)

    server = scripted([chunked])
    client = Client(server.url, 2, 5)
    assert client.request("POST", "/x", {}, b"{}").body == b"hello world"
    assert client.request("POST", "/y", {}, b"{}").body == b"answer 2"
    assert server.connections == 1


def test_body_framed_by_the_end_of_the_connection(scripted) -> None:
    def until_close(peer: Peer) -> None:
        peer.read_request()
        peer.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of ")
        peer.sendall(b"it")

    server = scripted([until_close])
    client = Client(server.url, 2, 5)
    assert client.request("POST", "/x", {}, b"").body == b"all of it"
    assert client.request("POST", "/x", {}, b"").body == b"all of it"
    assert server.connections == 2  # not kept: the server closed it


def test_an_informational_response_is_skipped(scripted) -> None:
    def continue_first(peer: Peer) -> None:
        peer.read_request()
        peer.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(202, b"accepted"))

    server = scripted([continue_first])
    response = Client(server.url, 2, 5).request("POST", "/x", {}, b"{}")
    assert (response.status, response.body) == (202, b"accepted")


def test_a_connection_closed_while_idle_is_replaced_before_sending(scripted) -> None:
    def one_then_close(peer: Peer) -> None:
        peer.read_request()
        peer.sendall(answer())  # keep-alive by default, then closed: an idle timeout, a restart

    server = scripted([one_then_close])
    client = Client(server.url, 2, 5)
    for _ in range(3):
        assert client.request("POST", "/x", {}, b"{}").status == 200
        time.sleep(0.1)  # the server's close has arrived
    assert [number for number, _ in server.requests] == [0, 1, 2]  # each request sent once


def test_a_request_sent_whole_is_not_sent_again(scripted) -> None:
    """The server reads the request and closes without answering: it may have acted on it (a POST
    the supervisor admitted), so the client reports it and sends nothing more, on a fresh
    connection or on a reused one."""
    def answer_then_vanish(peer: Peer) -> None:
        peer.read_request()
        peer.sendall(answer())
        peer.read_request()  # read whole, then closed unanswered

    server = scripted([answer_then_vanish])
    client = Client(server.url, 2, 5)
    assert client.request("POST", "/x", {}, b"first").status == 200
    with pytest.raises(TransportError):
        client.request("POST", "/x", {}, b"second")
    time.sleep(0.2)
    assert [request.endswith(b"second") for _, request in server.requests] == [False, True]
    assert server.connections == 1
    assert client.request("POST", "/x", {}, b"third").status == 200  # a new connection then
    assert server.connections == 2


def test_a_response_too_slow_times_out(scripted) -> None:
    def slow(peer: Peer) -> None:
        peer.read_request()
        time.sleep(1.5)
        peer.sendall(answer())

    server = scripted([slow, keep_answering])
    client = Client(server.url, 2, 0.3)
    started = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        client.request("POST", "/x", {}, b"{}")
    assert 0.3 <= time.monotonic() - started < 1.2
    assert client.request("POST", "/x", {}, b"{}").status == 200  # not on the timed-out connection
    assert server.connections == 2 and len(server.requests) == 2


def test_https_with_the_servers_certificate_checked(scripted, tmp_path: Path) -> None:
    """A Lambda function URL is https: the client speaks TLS, keeps the connection, and checks the
    certificate (the system's CAs by default: a self-signed one is refused)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    server = scripted([keep_answering], tls=server_side)
    url = server.url.replace("http://127.0.0.1", "https://localhost")
    client = Client(url, 2, 5, ssl_context=ssl.create_default_context(cafile=str(cert)))
    assert client.request("POST", "/x", {}, b"{}").body == b"answer 1"
    assert client.request("POST", "/x", {}, b"{}").body == b"answer 2"
    assert server.connections == 1
    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        Client(url, 2, 5).request("POST", "/x", {}, b"{}")
    assert len(server.requests) == 2  # nothing was sent to a server not verified


def test_nothing_listening_and_not_http(scripted) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(TransportError, match="cannot connect"):
        Client(f"http://127.0.0.1:{port}/", 2, 5).request("GET", "/", {})

    def garbage(peer: Peer) -> None:
        peer.read_request()
        peer.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

    with pytest.raises(TransportError, match="no response"):
        Client(scripted([garbage]).url, 2, 5).request("GET", "/", {})


@pytest.mark.parametrize(("script", "message"), [
    (lambda peer: (peer.read_request(), peer.sendall(answer(403, b'{"Message": "no"}'))),
     "refused the producer's credentials"),
    (lambda peer: (peer.read_request(), peer.sendall(answer(503, b'{"error": {}}'))),
     "could not take the tasks"),
    (lambda peer: peer.read_request(), "unreachable"),
    (lambda peer: (peer.read_request(), peer.sendall(answer(400, b'{"error": {"code": "deadline_passed"}}'))),
     "after the producer's deadline"),  # got our request late: a 503 for our client, not its 400
])
def test_the_supervisor_client_turns_failures_into_unavailable(scripted, script, message) -> None:
    server = scripted([script])
    supervisor = SupervisorClient(Settings(supervisor_url=server.url), Signer(KEY, SECRET, "us-east-1"))
    with pytest.raises(Unavailable, match=message):
        supervisor.supervise(b"{}")
    time.sleep(0.1)
    assert len(server.requests) == 1  # and it was sent once


def test_a_refusal_is_relayed_as_it_is(scripted) -> None:
    server = scripted([lambda peer: (peer.read_request(), peer.sendall(
        answer(400, b'{"error": {"code": "invalid_task"}}')))])
    supervisor = SupervisorClient(Settings(supervisor_url=server.url), None)
    reply = supervisor.supervise(b"{}")
    assert reply.refused and reply.status == 400 and reply.body == {"error": {"code": "invalid_task"}}

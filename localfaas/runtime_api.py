"""The Lambda Runtime API (2018-06-01), one endpoint per execution environment.

awslambdaric finds the API at a fixed path on `AWS_LAMBDA_RUNTIME_API`, so every environment
gets a listening socket of its own; one aiohttp application serves them all and tells the
environments apart by the local port a request arrived on.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import TYPE_CHECKING

from aiohttp import web

from localfaas.httpserver import bare_server

if TYPE_CHECKING:
    from localfaas.environment import Environment

PREFIX = "/2018-06-01/runtime"
_NEXT = f"{PREFIX}/invocation/next"
_INVOCATION = f"{PREFIX}/invocation/"
_INIT_ERROR = f"{PREFIX}/init/error"
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 + 100


def _error(status: int, error_type: str, message: str) -> web.Response:
    body = json.dumps({"errorMessage": message, "errorType": error_type})
    return web.Response(status=status, text=body, content_type="application/json")


_ACCEPTED = b'{"status":"OK"}'


class RuntimeApi:
    def __init__(self) -> None:
        self._environments: dict[int, Environment] = {}
        self._sites: dict[int, web.SockSite] = {}
        # A bare aiohttp Server: four fixed paths on the hot path of every invocation do not
        # need the Application router and middleware machinery.
        self._runner: web.ServerRunner | None = None

    async def setup(self) -> None:
        server = bare_server(self._dispatch, MAX_RESPONSE_BYTES + 1024 * 1024)
        self._runner = web.ServerRunner(server, access_log=None, handle_signals=False)
        await self._runner.setup()

    async def shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def open(self, environment: Environment) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert self._runner is not None, "setup() first"
        site = web.SockSite(self._runner, sock)
        await site.start()
        self._environments[port] = environment
        self._sites[port] = site
        return port

    async def close(self, environment: Environment) -> None:
        self._environments.pop(environment.port, None)
        site = self._sites.pop(environment.port, None)
        if site is not None:
            await site.stop()

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == _NEXT and request.method == "GET":
            return await self._next(request)
        if path.startswith(_INVOCATION) and request.method == "POST":
            request_id, _, action = path[len(_INVOCATION):].partition("/")
            if action == "response":
                return await self._response(request, request_id)
            if action == "error":
                return await self._invocation_error(request, request_id)
        if path == _INIT_ERROR and request.method == "POST":
            return await self._init_error(request)
        return _error(404, "NotFound", f"no such Runtime API path: {request.method} {path}")

    def _environment(self, request: web.BaseRequest) -> Environment | None:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return self._environments.get(sockname[1]) if sockname else None

    async def _next(self, request: web.BaseRequest) -> web.StreamResponse:
        environment = self._environment(request)
        if environment is None:
            return _error(500, "Runtime.Unknown", "environment is shutting down")
        try:
            invocation = await environment.next_invocation()
        except asyncio.CancelledError:
            return _error(500, "Runtime.Unknown", "environment is shutting down")
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": environment.spec.arn,
            "Lambda-Runtime-Trace-Id": invocation.trace_id,
            "Content-Type": invocation.content_type,
        }
        if invocation.client_context:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        return web.Response(body=invocation.payload, headers=headers)

    async def _response(self, request: web.BaseRequest, request_id: str) -> web.Response:
        environment = self._answering(request, request_id)
        if isinstance(environment, web.Response):
            return environment
        body = await request.read()
        if len(body) > MAX_RESPONSE_BYTES:
            environment.report_error(json.dumps({
                "errorType": "Function.ResponseSizeTooLarge",
                "errorMessage": "Response payload size exceeded maximum allowed payload size "
                                "(6291556 bytes).",
            }).encode())
            return _error(413, "RequestEntityTooLarge",
                          "Exceeded maximum allowed payload size (6291556 bytes).")
        environment.respond(body, request.headers.get("Content-Type", "application/json"))
        return web.Response(status=202, body=_ACCEPTED, content_type="application/json")

    async def _invocation_error(self, request: web.BaseRequest, request_id: str) -> web.Response:
        environment = self._answering(request, request_id)
        if isinstance(environment, web.Response):
            return environment
        environment.report_error(await request.read())
        return web.Response(status=202, body=_ACCEPTED, content_type="application/json")

    async def _init_error(self, request: web.BaseRequest) -> web.Response:
        environment = self._environment(request)
        if environment is None or environment.init_ms is not None:
            return _error(403, "InvalidStateTransition", "init/error after init finished")
        environment.report_init_error(await request.read())
        return web.Response(status=202, body=_ACCEPTED, content_type="application/json")

    def _answering(self, request: web.BaseRequest, request_id: str) -> Environment | web.Response:
        """The environment whose current invocation `request_id` is, or the refusal to send."""
        environment = self._environment(request)
        if environment is None:
            return _error(500, "Runtime.Unknown", "environment is shutting down")
        current = environment.current_request_id()
        if current == request_id:
            return environment
        if current is None:
            return _error(403, "InvalidStateTransition",
                          "State transition from Ready to InvocationResponse failed for runtime")
        return _error(400, "InvalidRequestID", "Invalid request ID")


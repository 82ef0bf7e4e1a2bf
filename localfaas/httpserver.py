"""aiohttp's bare `web.Server`, with a body limit of our choosing, for the control port's Lambda API.

The API matches its few paths itself, so it skips the Application router; but a bare Server
ignores `client_max_size` and caps bodies at 1 MiB, below Lambda's 6 MB. (Function URLs, on every
invocation's path, have a leaner server of their own: localfaas/http11.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web


def bare_server(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
                client_max_size: int) -> web.Server:
    loop = asyncio.get_running_loop()

    def make_request(message, payload, protocol, writer, task) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, loop,
                               client_max_size=client_max_size)

    return web.Server(handler, request_factory=make_request)

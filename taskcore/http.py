"""What the Chalice views share: JSON responses in the design's shape, and one hook that turns
the library's exceptions into HTTP answers, so that views stay a few lines each."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from chalice import Response
from chalice.app import handle_extra_types

from taskcore.errors import Unavailable, ValidationError, error_body, status_for

log = logging.getLogger("taskcore.http")


# Chalice's own encoding of a view's body (Response.to_dict: json.dumps with these arguments), built
# once: json.dumps with arguments builds a new encoder for every call. The body handed to Chalice is
# then a string, which it passes through as it is, so the bytes sent are the same.
_encode = json.JSONEncoder(separators=(",", ":"), default=handle_extra_types).encode


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body=_encode(body), status_code=status,
                    headers={"Content-Type": "application/json", **(headers or {})})


def error_response(code: str, message: str, details: Any = None, status: int | None = None) -> Response:
    return json_response(error_body(code, message, details), status or status_for(code))


def api_errors(view: Callable[..., Response]) -> Callable[..., Response]:
    """Bad input -> its 4xx; a dependency down -> 503 saying which. Chalice would answer a bare
    500 for both."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except ValidationError as error:
            return error_response(error.code, error.message, error.details)
        except Unavailable as error:
            log.warning("unavailable: %s %s", error.message, error.details)
            return error_response("unavailable", error.message, error.details, 503)
        except Exception as error:
            if not _is_redis_error(error):
                raise
            log.warning("redis unavailable: %r", error)
            return error_response("unavailable", "the task store (Redis) is unavailable",
                                  {"reason": repr(error)}, 503)

    return wrapper


def _is_redis_error(error: Exception) -> bool:
    # Looked up, not imported: only an app that uses the task store can raise Redis's errors, and
    # it has imported redis by then; an app without a store (the producer) never loads redis.
    redis = sys.modules.get("redis")
    return redis is not None and isinstance(error, redis.RedisError)

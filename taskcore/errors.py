"""The one error shape of the HTTP API: {"error": {"code", "message", "details"}}
(docs/architecture.md §3)."""

from __future__ import annotations

from typing import Any

# HTTP status per error code; anything the client got wrong is a 4xx, never a 500.
STATUS_BY_CODE: dict[str, int] = {
    "body_too_large": 413,
    "not_found": 404,
    "method_not_allowed": 405,
    "unsupported_media_type": 415,
    "unavailable": 503,
    "internal_error": 500,
}
DEFAULT_CLIENT_STATUS = 400


class ValidationError(ValueError):
    """Input the client got wrong. `code` is stable and documented; `details` says where."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


class Unavailable(Exception):
    """A service the request needs (RabbitMQ, Redis, the supervisor) could not be reached or did not
    confirm; nothing of the request was kept. Maps to 503."""

    code = "unavailable"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


def status_for(code: str) -> int:
    return STATUS_BY_CODE.get(code, DEFAULT_CLIENT_STATUS)

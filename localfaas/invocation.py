"""One invocation of a function: what goes in, what comes out, and the error documents Lambda
produces itself (timeouts, runtime exits), shaped as docs/lambda_behaviours.md §2 describes."""

from __future__ import annotations

import asyncio
import enum
import json
import os
import time
from dataclasses import dataclass, field


class ReportStatus(enum.StrEnum):
    """The REPORT line's `Status:` field, written only when the invocation did not end normally."""

    ERROR = "error"  # the runtime exited, or its init failed
    TIMEOUT = "timeout"


def new_request_id() -> str:
    """A random (version 4, RFC 4122 variant) UUID, as str(uuid.uuid4()) renders it, for a
    fraction of its cost."""
    text = os.urandom(16).hex()
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{_VARIANT[text[16]]}{text[17:20]}-{text[20:]}"


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_trace_id() -> str:
    random = os.urandom(20).hex()  # one call: 12 bytes for the root, 8 for the parent
    return f"Root=1-{int(time.time()):08x}-{random[:24]};Parent={random[24:]};Sampled=0"


@dataclass(frozen=True)
class InvocationOutcome:
    """What the caller of Invoke sees. `function_error` maps to `X-Amz-Function-Error: Unhandled`."""

    request_id: str
    body: bytes
    content_type: str = "application/json"
    function_error: bool = False
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return not self.function_error

    def json(self) -> object:
        return json.loads(self.body) if self.body else None


class Throttled(Exception):
    """The function is at its concurrency limit (Lambda: 429 TooManyRequestsException)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Invocation:
    payload: bytes
    content_type: str = "application/json"
    client_context: str | None = None
    request_id: str = field(default_factory=new_request_id)
    trace_id: str = field(default_factory=new_trace_id)
    outcome: asyncio.Future[InvocationOutcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    log_lines: list[str] | None = None  # collected only when the caller asked for Tail
    started_at: float = 0.0  # monotonic, set when the runtime receives the event
    deadline_ms: int = 0  # epoch milliseconds, sent to the runtime as Lambda-Runtime-Deadline-Ms

    def finish(self, outcome: InvocationOutcome) -> bool:
        """Settle the invocation once; later reports (a crash after a timeout, say) are ignored."""
        if self.outcome.done():
            return False
        self.outcome.set_result(outcome)
        return True

    def succeed(self, body: bytes, content_type: str) -> bool:
        return self.finish(InvocationOutcome(self.request_id, body, content_type or "application/json"))

    def fail(self, document: dict[str, object]) -> bool:
        return self.finish(InvocationOutcome(
            self.request_id, json.dumps(document).encode(), "application/json",
            function_error=True, error_type=str(document.get("errorType") or "Unhandled"),
        ))

    def fail_with_body(self, body: bytes) -> bool:
        try:
            error_type = str(json.loads(body).get("errorType") or "Unhandled")
        except (ValueError, AttributeError):
            error_type = "Unhandled"
        return self.finish(InvocationOutcome(self.request_id, body, "application/json", True, error_type))


def timeout_error(request_id: str, timeout: float) -> dict[str, object]:
    return {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds",
    }


def exit_error(request_id: str, returncode: int | None) -> dict[str, object]:
    if returncode is not None and returncode < 0:
        import signal

        reason = f"Runtime exited with error: signal: {_signal_word(signal.Signals(-returncode))}"
    elif returncode:
        reason = f"Runtime exited with error: exit status {returncode}"
    else:
        reason = "Runtime exited without providing a reason"
    return {"errorType": "Runtime.ExitError", "errorMessage": f"RequestId: {request_id} Error: {reason}"}


def _signal_word(sig: object) -> str:
    # Go's os.ProcessState wording, which is what Lambda's own messages use.
    words = {"SIGKILL": "killed", "SIGTERM": "terminated", "SIGSEGV": "segmentation fault",
             "SIGABRT": "aborted", "SIGINT": "interrupt"}
    name = getattr(sig, "name", str(sig))
    return words.get(name, name.lower())


def report_line(request_id: str, duration_ms: float, memory_mb: int, max_memory_mb: int,
                init_ms: float | None, status: ReportStatus | None = None) -> str:
    parts = [
        f"REPORT RequestId: {request_id}",
        f"Duration: {duration_ms:.2f} ms",
        f"Billed Duration: {max(1, int(-(-duration_ms // 1)))} ms",
        f"Memory Size: {memory_mb} MB",
        f"Max Memory Used: {max_memory_mb} MB",
    ]
    if init_ms is not None:
        parts.append(f"Init Duration: {init_ms:.2f} ms")
    if status:
        parts.append(f"Status: {status}")
    return "\t".join(parts) + "\t"

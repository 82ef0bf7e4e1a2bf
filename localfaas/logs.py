"""Function logs as CloudWatch shows them, one stream per function in `<run dir>/logs/<function>.log`,
and the host's console.

The console is quiet by default: under load a function writes three lines (START, END, REPORT)
per invocation, thousands a second, and the lines that matter drown. It shows a line per cold
start, a line per failure (function error, timeout, init error, crashed environment) and, every
`summary_seconds` in which something ran, one summary line. `full` also echoes every function
log line, prefixed with the function's name, as the log files have them.
"""

from __future__ import annotations

import enum
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO


class ConsoleMode(enum.StrEnum):
    QUIET = "quiet"  # cold starts, failures and a periodic summary
    FULL = "full"  # every function log line too

MAX_MESSAGE = 200  # characters of an error message on the console; the log file has all of it


@dataclass
class _Window:
    """What one function did since the last summary."""

    invocations: int = 0
    errors: int = 0
    cold_starts: int = 0
    durations_ms: list[float] = field(default_factory=list)


def error_summary(body: bytes) -> tuple[str, str]:
    """The errorType and errorMessage of a Lambda error document (best effort)."""
    try:
        document = json.loads(body)
    except ValueError:
        return "Unhandled", body[:MAX_MESSAGE].decode("utf-8", "replace")
    if not isinstance(document, dict):
        return "Unhandled", str(document)[:MAX_MESSAGE]
    return str(document.get("errorType") or "Unhandled"), str(document.get("errorMessage") or "")


class LogSink:
    def __init__(self, directory: Path, console: TextIO | None = None,
                 mode: ConsoleMode | str = ConsoleMode.QUIET, summary_seconds: float = 10.0) -> None:
        if mode not in set(ConsoleMode):
            raise ValueError(f"console mode must be one of {', '.join(ConsoleMode)}, not {mode!r}")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.console = console if console is not None else sys.stdout
        self.full = mode == ConsoleMode.FULL
        self.summary_seconds = summary_seconds
        self._files: dict[str, IO[str]] = {}
        self._width = 12
        self._windows: dict[str, _Window] = {}
        self._window_started = time.monotonic()

    # -- the function log streams -----------------------------------------------------------------

    def line(self, function: str, text: str) -> None:
        handle = self._files.get(function)
        if handle is None:
            # Buffered: flushed by flush(), which the host calls a few times a second.
            handle = self._files[function] = open(self.directory / f"{function}.log", "a")  # noqa: SIM115
            self._width = max(self._width, len(function))
        handle.write(text + "\n")
        if self.full:
            self._console_line(function, text)

    def path(self, function: str) -> Path:
        return self.directory / f"{function}.log"

    # -- what the console shows -------------------------------------------------------------------

    def host(self, text: str) -> None:
        self.console.write(f"localfaas: {text}\n")
        self.console.flush()

    def environment_started(self, function: str, init_ms: float, provisioned: bool = False) -> None:
        """An environment finished its init phase: a cold start, which takes its first invocation,
        or a provisioned environment, which waits for one."""
        self._windows.setdefault(function, _Window()).cold_starts += 1
        if not self.full:
            what = "provisioned environment ready" if provisioned else "cold start: new environment"
            self._console_line(function, f"{what}, init {init_ms:.0f} ms")

    def finished(self, function: str, request_id: str, duration_ms: float,
                 error: tuple[str, str] | None, init_failed: bool = False) -> None:
        """One invocation is over: count it and, in quiet mode, say so if it failed.
        `error` is (errorType, errorMessage) when the function failed."""
        window = self._windows.get(function)
        if window is None:  # not setdefault: that would build a _Window on every invocation
            window = self._windows[function] = _Window()
        window.invocations += 1
        if not init_failed:  # no handler ran: a duration of 0 would only pull the median down
            window.durations_ms.append(duration_ms)
        if error is not None:
            window.errors += 1
            if not self.full:
                error_type, message = error
                what = "init failed" if init_failed else "error"
                self._console_line(function, f"{what}: {error_type}: {_shorten(message)} "
                                             f"(request {request_id}, log {self.path(function)})")

    def environment_exited(self, function: str, returncode: int | None) -> None:
        """An environment died between invocations (no caller saw it fail)."""
        if not self.full:
            self._console_line(function, f"environment exited unexpectedly (exit status {returncode}); "
                                         f"the next invocation starts a new one")

    def summarize(self, environments: Callable[[], Mapping[str, int]]) -> None:
        """Every `summary_seconds`, one line about what ran since the last one (none if nothing did).
        `environments` gives the live environments per function, asked only when a line is due."""
        now = time.monotonic()
        elapsed = now - self._window_started
        if elapsed < self.summary_seconds:
            return
        windows, self._windows, self._window_started = self._windows, {}, now
        if not windows:
            return
        counts = environments()
        parts = []
        for function, window in sorted(windows.items()):
            figures = [f"{window.invocations} inv"]
            if window.errors:
                figures.append(_count(window.errors, "error"))
            if window.durations_ms:
                figures.append(f"p50 {statistics.median(window.durations_ms):.1f} ms")
            if window.cold_starts:
                figures.append(f"{window.cold_starts} cold")
            figures.append(f"{counts.get(function, 0)} env")
            parts.append(f"{function}: {', '.join(figures)}")
        self.host(f"last {elapsed:.0f} s: " + " | ".join(parts))

    def align(self, functions: Iterable[str]) -> None:
        """Line the console's function names up from the start."""
        self._width = max([self._width, *(len(name) for name in functions)])

    def _console_line(self, function: str, text: str) -> None:
        self._width = max(self._width, len(function))
        self.console.write(f"{function:<{self._width}} | {text}\n")

    # -- housekeeping -----------------------------------------------------------------------------

    def flush(self) -> None:
        for handle in self._files.values():
            handle.flush()
        self.console.flush()

    def close(self) -> None:
        self.flush()
        for handle in self._files.values():
            handle.close()
        self._files.clear()


def _shorten(message: str) -> str:
    message = " ".join(message.split())  # tracebacks and multi-line messages on one line
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 3] + "..."


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"

"""Function logs as CloudWatch shows them: one stream per function, each line on the console
prefixed with the function's name and kept in `<run dir>/logs/<function>.log`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, TextIO


class LogSink:
    def __init__(self, directory: Path, console: TextIO | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.console = console if console is not None else sys.stdout
        self._files: dict[str, IO[str]] = {}
        self._width = 12

    def line(self, function: str, text: str) -> None:
        handle = self._files.get(function)
        if handle is None:
            # Buffered: flushed by flush(), which the host calls a few times a second.
            handle = self._files[function] = open(self.directory / f"{function}.log", "a")  # noqa: SIM115
            self._width = max(self._width, len(function))
        handle.write(text + "\n")
        self.console.write(f"{function:<{self._width}} | {text}\n")

    def host(self, text: str) -> None:
        self.console.write(f"localfaas: {text}\n")
        self.console.flush()

    def flush(self) -> None:
        for handle in self._files.values():
            handle.flush()
        self.console.flush()

    def close(self) -> None:
        self.flush()
        for handle in self._files.values():
            handle.close()
        self._files.clear()

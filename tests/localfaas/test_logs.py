"""The host's console and the function logs (localfaas/logs.py): quiet by default (cold starts,
failures, a periodic summary), every line with --console full, the log files complete either way.
Against a real host; the summary's arithmetic also on its own."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from localfaas.logs import LogSink
from taskfaas.stack import RunningHost, eventually

Console = Callable[..., RunningHost]  # the `localfaas` fixture (conftest.py)


def console_lines(host: RunningHost, function: str) -> list[str]:
    """What the console said about `function`: its lines are its name, padded, then "| "."""
    return [line.split("| ", 1)[1] for line in host.console().splitlines()
            if re.match(rf"{function} +\| ", line)]


def wait_console(host: RunningHost, text: str, timeout: float = 10) -> str:
    return eventually(lambda: text in host.console() and host.console(), timeout,
                      lambda: f"{text!r} on the console:\n{host.console()}")


_FIGURES = re.compile(r"(\d+) inv(?:, (\d+) errors?)?(?:, p50 \d+\.\d ms)?(?:, (\d+) cold)?, \d+ env")


def summary_totals(host: RunningHost, function: str) -> tuple[int, int, int]:
    """Invocations, errors and cold starts of `function` over every summary line so far."""
    totals = [0, 0, 0]
    for line in host.console().splitlines():
        if not line.startswith("localfaas: last "):
            continue
        for part in line.split(": ", 2)[2].split(" | "):
            name, figures = part.split(": ", 1)
            if name == function:
                match = _FIGURES.fullmatch(figures)
                assert match, f"summary figures {figures!r} not as documented"
                for index, value in enumerate(match.groups()):
                    totals[index] += int(value or 0)
    return totals[0], totals[1], totals[2]


def test_a_normal_invocation_shows_its_cold_start_only(localfaas: Console, runtime_client: str) -> None:
    host = localfaas(args=["--summary-seconds", "1"], runtime_client=runtime_client)
    first = json.loads(host.invoke("Behave", {"n": 1})[2])
    status, headers, _ = host.invoke("Behave", {"n": 2})
    assert status == 200 and "X-Amz-Function-Error" not in headers
    request_id = headers["x-amzn-RequestId"]
    host.wait_for_log("Behave", f"REPORT RequestId: {request_id}")
    eventually(lambda: summary_totals(host, "Behave") == (2, 0, 1), 10,
               lambda: f"a summary of 2 invocations, 1 cold start:\n{host.console()}")

    lines = console_lines(host, "Behave")
    assert len(lines) == 1, lines  # the second invocation was warm: nothing to say
    assert re.fullmatch(r"cold start: new environment, init \d+ ms", lines[0]), lines
    console = host.console()
    for noise in ("START RequestId", "END RequestId", "REPORT RequestId", "behave got"):
        assert noise not in console
    # ... and all of it is in the function's log file
    log = host.log("Behave")
    for text in (f"START RequestId: {request_id}", f"END RequestId: {request_id}",
                 f"REPORT RequestId: {request_id}", "behave got {'n': 2}", "Init Duration"):
        assert text in log
    assert first["ok"] is True


def test_failures_each_get_a_line(localfaas: Console, runtime_client: str) -> None:
    host = localfaas(args=["--summary-seconds", "1"], runtime_client=runtime_client)
    raised = host.invoke("Behave", {"raise": "missing-key"})[1]["x-amzn-RequestId"]
    crashed = host.invoke("Behave", {"exit": 3})[1]["x-amzn-RequestId"]
    timed_out = host.invoke("Behave", {"sleep": 5})[1]["x-amzn-RequestId"]  # Behave's Timeout is 2 s
    broken = host.invoke("Broken", {})[1]["x-amzn-RequestId"]
    wait_console(host, "Broken: 1 inv, 1 error")

    behave = console_lines(host, "Behave")
    log_path = host.run_dir / "logs" / "Behave.log"
    assert f"error: KeyError: 'missing-key' (request {raised}, log {log_path})" in behave
    assert any(line.startswith("error: Runtime.ExitError: ") and "exit status 3" in line
               and crashed in line for line in behave), behave
    assert any(line.startswith("error: Sandbox.Timedout: ") and "Task timed out after 2.00 seconds" in line
               and timed_out in line for line in behave), behave
    [broken_line] = console_lines(host, "Broken")
    assert broken_line.startswith("init failed: Runtime.ImportModuleError: ") and broken in broken_line
    # Two cold starts, a line each: the exception left the environment warm, the exit ended it,
    # the timeout's environment was new (and was killed in turn).
    assert sum(line.startswith("cold start") for line in behave) == 2, behave
    eventually(lambda: summary_totals(host, "Behave") == (3, 3, 2), 10,
               lambda: f"a summary of 3 failed invocations:\n{host.console()}")


def test_an_environment_that_dies_idle_is_reported(localfaas: Console, runtime_client: str) -> None:
    host = localfaas(runtime_client=runtime_client)
    pid = json.loads(host.invoke("Echo", {})[2])["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_console(host, "environment exited unexpectedly (exit status -9)")
    assert json.loads(host.invoke("Echo", {})[2])["pid"] != pid  # the next one starts afresh


def test_no_summary_when_nothing_ran(localfaas: Console) -> None:
    host = localfaas(args=["--summary-seconds", "0.5"])
    host.invoke("Echo", {})
    wait_console(host, "Echo: 1 inv")
    time.sleep(2.5)  # five summary periods without an invocation
    summaries = [line for line in host.console().splitlines() if line.startswith("localfaas: last ")]
    assert len(summaries) == 1, summaries


def test_full_console_shows_every_line(localfaas: Console, runtime_client: str) -> None:
    host = localfaas(args=["--console", "full"], runtime_client=runtime_client)
    request_id = host.invoke("Behave", {"n": 1})[1]["x-amzn-RequestId"]
    host.invoke("Behave", {"raise": "k"})
    console = wait_console(host, f"REPORT RequestId: {request_id}")
    behave = console_lines(host, "Behave")
    assert f"START RequestId: {request_id} Version: $LATEST" in behave
    assert "behave got {'n': 1}" in behave
    assert not [line for line in behave if line.startswith(("cold start", "error: "))]
    assert "--console full" not in console and "every line here" in console


def test_summary_arithmetic(tmp_path: Path) -> None:
    console = io.StringIO()
    sink = LogSink(tmp_path, console, summary_seconds=0)
    sink.environment_started("Fn", 120.0)
    for duration in (1.0, 2.0, 10.0):
        sink.finished("Fn", "r", duration, None)
    sink.finished("Other", "r2", 4.0, ("Boom", "it\nbroke"))
    sink.finished("Other", "r3", 0.0, ("Runtime.ImportModuleError", "no module"), init_failed=True)
    sink.summarize(lambda: {"Fn": 2})
    sink.summarize(lambda: {"Fn": 2})  # nothing happened since: no second line
    lines = console.getvalue().splitlines()
    assert lines[0] == "Fn           | cold start: new environment, init 120 ms"
    assert lines[1] == f"Other        | error: Boom: it broke (request r2, log {tmp_path / 'Other.log'})"
    assert lines[2].startswith("Other        | init failed: Runtime.ImportModuleError: no module (request r3")
    assert re.fullmatch(r"localfaas: last \d+ s: Fn: 3 inv, p50 2\.0 ms, 1 cold, 2 env"
                        r" \| Other: 2 inv, 2 errors, p50 4\.0 ms, 0 env", lines[3]), lines[3]
    assert len(lines) == 4

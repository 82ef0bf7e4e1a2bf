"""An execution environment: one process running a runtime interface client against a Runtime
API endpoint of its own: the official one (`python -m awslambdaric <handler>`) or localfaas's lean
one (`python -m localfaas.lean_runtime <handler>`, awslambdaric's bootstrap over one plain socket),
as the host's `--runtime-client` says.

The environment hands invocations to the runtime's `/next` long-poll, enforces the function's
timeout (killing the process, as Lambda resets the sandbox), notices a process that dies in the
middle of an invocation, and writes START/END/REPORT around the function's own output.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import enum
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from localfaas.aws import MAX_RESPONSE_BYTES
from localfaas.invocation import Invocation, ReportStatus, exit_error, report_line, timeout_error
from localfaas.logs import LogSink, error_summary
from localfaas.runtime_api import NextAnswer, RuntimeEndpoint
from localfaas.template import FunctionSpec

INIT_TIME_LIMIT = 10.0  # seconds; Lambda's limit for the init phase of on-demand functions

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # The environment must not outlive the host, even if the host is SIGKILLed.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class RuntimeClient(enum.StrEnum):
    """Which runtime interface client an environment runs (`localfaas start --runtime-client`)."""

    OFFICIAL = "official"  # python -m awslambdaric: AWS's own, as Lambda's managed runtimes run it
    LEAN = "lean"  # python -m localfaas.lean_runtime: the same bootstrap, a cheaper transport


DEFAULT_RUNTIME_CLIENT = RuntimeClient.LEAN  # about 0.3 ms less CPU per invocation (README)
# The host's setting naming the client; it rides in the variables to start() (FunctionPool passes
# them through), which takes it out again: the function's process never sees it.
RUNTIME_CLIENT_SETTING = "LOCALFAAS_RUNTIME_CLIENT"
_CLIENT_MODULES = {RuntimeClient.OFFICIAL: "awslambdaric", RuntimeClient.LEAN: "localfaas.lean_runtime"}


class State(enum.StrEnum):
    INIT = "init"  # the process is starting: its init phase is not over
    IDLE = "idle"  # warm, waiting for an invocation
    BUSY = "busy"  # running an invocation
    DEAD = "dead"  # stopped, timed out, failed its init or exited: never used again


# Every change of state an environment may make; anything else is a bug in the host.
_TRANSITIONS: dict[State, frozenset[State]] = {
    State.INIT: frozenset({State.IDLE, State.BUSY, State.DEAD}),
    State.IDLE: frozenset({State.BUSY, State.DEAD}),
    State.BUSY: frozenset({State.IDLE, State.DEAD}),
    State.DEAD: frozenset(),
}


class InvalidTransition(RuntimeError):
    """An environment was asked to change state in a way _TRANSITIONS does not allow."""


def lambda_environment(spec: FunctionSpec, settings: Mapping[str, str]) -> dict[str, str]:
    """The variables Lambda sets for a Python function, over the function's own."""
    python_dirs: list[str] = []
    for layer in reversed(spec.layer_dirs):  # a later layer overwrites an earlier one
        version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        site = layer / "python" / "lib" / version / "site-packages"
        python_dirs += [str(site), str(layer / "python")]
    bin_dirs = [str(layer / "bin") for layer in spec.layer_dirs]
    reserved = {
        "_HANDLER": spec.handler,
        "AWS_REGION": spec.region,
        "AWS_DEFAULT_REGION": spec.region,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
        "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
        "LAMBDA_TASK_ROOT": str(spec.code_dir),
        "LAMBDA_RUNTIME_DIR": str(Path(os.__file__).parent),
        "TZ": ":UTC",
    }
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if settings.get(key):
            reserved[key] = settings[key]
    defaults = {
        "LANG": "en_US.UTF-8",
        "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "/usr/bin:/bin")]),
        "PYTHONPATH": os.pathsep.join(python_dirs),
    }
    client = RuntimeClient(settings.get(RUNTIME_CLIENT_SETTING, DEFAULT_RUNTIME_CLIENT))
    return defaults | dict(spec.environment) | reserved | {RUNTIME_CLIENT_SETTING: client.value}


class Environment:
    def __init__(self, spec: FunctionSpec, generation: int, variables: Mapping[str, str],
                 logs: LogSink,
                 on_exit: Callable[[Environment], None]) -> None:
        self.spec = spec
        self.generation = generation
        self.id = uuid.uuid4().hex
        self._state = State.INIT
        self.last_used = time.monotonic()
        self.init_ms: float | None = None
        # Set by the pool before start(): initialized ahead of any invocation (provisioned
        # concurrency), so no invocation waits for its init and no REPORT line shows it.
        self.provisioned = False
        self._init_over: asyncio.Event | None = None
        self._variables = variables
        self._endpoint: RuntimeEndpoint | None = None  # its own Runtime API, opened by start()
        self._logs = logs
        self._on_exit = on_exit
        self._process: asyncio.subprocess.Process | None = None
        self._spawned_at = 0.0
        self._current: Invocation | None = None
        self._queued: Invocation | None = None
        self._next_waiter: NextAnswer | None = None  # the runtime's `/next`, waiting
        # The timeout: one timer per environment, not one per invocation. `_deadline` (loop time)
        # is the current invocation's; the timer, when it fires, acts on it or re-arms for it.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._report_init = False
        self._status: ReportStatus | None = None
        self._tasks: tuple[asyncio.Task[None], ...] = ()
        self._memory_mb = 0
        self._memory_read_at = 0.0

    @property
    def state(self) -> State:
        return self._state

    def transition(self, to: State) -> bool:
        """The one way the state changes. Returns whether it did: an environment can end several
        ways at once (stopped, then its process exits), and only the first to say DEAD changes
        it. Any other move that _TRANSITIONS does not allow raises InvalidTransition."""
        if to is State.DEAD and self._state is State.DEAD:
            return False
        if to not in _TRANSITIONS[self._state]:
            raise InvalidTransition(f"environment {self.id} of {self.spec.name}: {self._state} -> {to}")
        self._state = to
        return True

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        self._endpoint = endpoint = await RuntimeEndpoint.open(self)
        stream = f"{datetime.datetime.now(datetime.UTC):%Y/%m/%d}/[$LATEST]{self.id}"
        env = dict(self._variables) | {
            "AWS_LAMBDA_RUNTIME_API": endpoint.address,
            "AWS_LAMBDA_LOG_STREAM_NAME": stream,
        }
        if self.provisioned:
            env["AWS_LAMBDA_INITIALIZATION_TYPE"] = "provisioned-concurrency"
        self._init_over = asyncio.Event()
        module = _CLIENT_MODULES[RuntimeClient(env.pop(RUNTIME_CLIENT_SETTING, DEFAULT_RUNTIME_CLIENT))]
        self._spawned_at = time.monotonic()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, self.spec.handler,
            cwd=self.spec.code_dir, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            # Own session: a Ctrl-C at the terminal is for the host, which stops environments itself.
            preexec_fn=_die_with_parent, start_new_session=True,
        )
        self._tasks = (asyncio.create_task(self._pump_output(self._process.stdout)),
                       asyncio.create_task(self._watch_exit(self._process)))

    async def invoke(self, invocation: Invocation) -> None:
        """Hand the invocation to the runtime and wait until it is settled, one way or another."""
        self.transition(State.BUSY)
        self._current = invocation
        self._status = None
        if self._next_waiter is not None:
            answer, self._next_waiter = self._next_waiter, None
            self._hand(invocation, answer)
        else:
            self._queued = invocation
            if self.init_ms is None:  # cold: the init phase has a limit of its own
                self._arm(INIT_TIME_LIMIT + self.spec.timeout)
        try:
            await asyncio.shield(invocation.outcome)
        finally:
            self._finish(invocation)

    def _finish(self, invocation: Invocation) -> None:
        self._deadline = None  # the timer, if it fires before the next invocation, does nothing
        elapsed = (time.monotonic() - invocation.started_at) * 1000 if invocation.started_at else 0.0
        if not invocation.started_at:  # settled before the runtime took it (init failed)
            self._log(f"START RequestId: {invocation.request_id} Version: $LATEST")
        self._log(f"END RequestId: {invocation.request_id}")
        self._log(report_line(invocation.request_id, elapsed, self.spec.memory_mb, self._max_memory_mb(),
                              self.init_ms if self._report_init else None, self._status))
        outcome = invocation.outcome.result() \
            if invocation.outcome.done() and not invocation.outcome.cancelled() else None
        error = error_summary(outcome.body) if outcome is not None and outcome.function_error else None
        self._logs.finished(self.spec.name, invocation.request_id, elapsed, error,
                            init_failed=not invocation.started_at)
        self._report_init = False
        self._current = None
        self.last_used = time.monotonic()
        if self.state is State.BUSY:
            self.transition(State.IDLE)

    # -- called by the Runtime API (runtime_api.RuntimeHandler) ------------------------------

    @property
    def function_arn(self) -> str:
        return self.spec.arn

    @property
    def initialized(self) -> bool:
        return self.init_ms is not None

    async def wait_initialized(self) -> bool:
        """Until the init phase is over (start() first); whether the environment came out of it
        ready for invocations."""
        assert self._init_over is not None, "start() first"
        await self._init_over.wait()
        return self.initialized and self.state is State.IDLE

    def next_invocation(self, answer: NextAnswer) -> None:
        if self.state is State.DEAD:
            answer(None)
            return
        if self.init_ms is None:
            self.init_ms = (time.monotonic() - self._spawned_at) * 1000
            self._report_init = not self.provisioned
            if self._init_over is not None:
                self._init_over.set()
            self._logs.environment_started(self.spec.name, self.init_ms, self.provisioned)
            if self.state is State.INIT:
                self.transition(State.IDLE)
        if self._queued is not None:
            invocation, self._queued = self._queued, None
            self._hand(invocation, answer)
        else:
            self._next_waiter = answer

    def forget_next(self, answer: NextAnswer) -> None:
        if self._next_waiter == answer:
            self._next_waiter = None

    def _hand(self, invocation: Invocation, answer: NextAnswer) -> None:
        """The runtime receives the invocation: its timeout starts now."""
        invocation.started_at = time.monotonic()
        invocation.deadline_ms = int((time.time() + self.spec.timeout) * 1000)
        self._arm(self.spec.timeout)
        self._log(f"START RequestId: {invocation.request_id} Version: $LATEST")
        answer(invocation)

    def _arm(self, seconds: float) -> None:
        """The current invocation times out `seconds` from now. The timer is left running between
        invocations: an earlier one's fires before this deadline and re-arms (_check), so a
        warm invocation costs no timer of its own."""
        loop = asyncio.get_running_loop()
        self._deadline = deadline = loop.time() + seconds
        if self._timer is not None and self._timer_at > deadline:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._check)

    def _check(self) -> None:
        self._timer = None
        deadline, invocation = self._deadline, self._current
        if deadline is None or invocation is None or invocation.outcome.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._check)
            return
        self._timed_out(invocation)

    def current_request_id(self) -> str | None:
        return self._current.request_id if self._current else None

    def respond(self, body: bytes, content_type: str) -> None:
        assert self._current is not None
        self._current.succeed(body, content_type)

    def report_error(self, body: bytes) -> None:
        assert self._current is not None
        self._current.fail_with_body(body)

    def reject_oversized_response(self) -> None:
        """The runtime exits when its response is refused; Lambda resets such an environment."""
        self.report_error(json.dumps({
            "errorType": "Function.ResponseSizeTooLarge",
            "errorMessage": "Response payload size exceeded maximum allowed payload size "
                            f"({MAX_RESPONSE_BYTES} bytes).",
        }).encode())
        self.stop()

    def report_init_error(self, body: bytes) -> None:
        init_ms = (time.monotonic() - self._spawned_at) * 1000
        try:
            error_type = json.loads(body).get("errorType", "Runtime.Unknown")
        except (ValueError, AttributeError):
            error_type = "Runtime.Unknown"
        self._log(f"INIT_REPORT Init Duration: {init_ms:.2f} ms\tPhase: init\tStatus: error\t"
                  f"Error Type: {error_type}")
        self._status = ReportStatus.ERROR
        self.transition(State.DEAD)  # awslambdaric exits after reporting; never reuse this one
        invocation = self._current
        if invocation is not None:
            invocation.fail_with_body(body)

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Kill the process; the exit watcher then closes the endpoint and tells the pool."""
        if self.transition(State.DEAD):
            self._kill()
        self._abandon_next()

    def _abandon_next(self) -> None:
        if self._next_waiter is not None:
            answer, self._next_waiter = self._next_waiter, None
            answer(None)

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    def _timed_out(self, invocation: Invocation) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        self._log(f"{stamp} {invocation.request_id} Task timed out after {self.spec.timeout:.2f} seconds")
        self._status = ReportStatus.TIMEOUT
        self.transition(State.DEAD)
        self._kill()
        invocation.fail(timeout_error(invocation.request_id, self.spec.timeout))

    async def _watch_exit(self, process: asyncio.subprocess.Process) -> None:
        returncode = await process.wait()
        expected = not self.transition(State.DEAD)  # stopped, timed out or failed its init: said already
        invocation = self._current
        if not expected and invocation is None:
            self._logs.environment_exited(self.spec.name, returncode)
        if invocation is not None and not invocation.outcome.done():
            document = exit_error(invocation.request_id, returncode)
            self._log(str(document["errorMessage"]))
            self._log("Runtime.ExitError")
            self._status = ReportStatus.ERROR
            invocation.fail(document)
        self._abandon_next()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._init_over is not None:
            self._init_over.set()
        if self._endpoint is not None:
            self._endpoint.close()
        self._on_exit(self)

    async def _pump_output(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        pending = b""
        while chunk := await stream.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._function_output(line)
        if pending:
            self._function_output(pending)

    def _function_output(self, raw: bytes) -> None:
        # awslambdaric ends the lines of one multi-line record with \r so that CloudWatch keeps
        # it as one event; the console shows them as lines.
        for text in raw.decode("utf-8", "replace").split("\r"):
            if text:
                self._log(text)

    def _log(self, text: str) -> None:
        self._logs.line(self.spec.name, text)
        if self._current is not None and self._current.log_lines is not None:
            self._current.log_lines.append(text)

    def _max_memory_mb(self) -> int:
        # VmHWM is the process's peak; reading /proc on every invocation of a busy function
        # costs more than the figure is worth, so it is refreshed at most twice a second.
        now = time.monotonic()
        if now - self._memory_read_at < 0.5:
            return self._memory_mb
        self._memory_read_at = now
        self._memory_mb = self._read_peak_memory_mb() or self._memory_mb
        return self._memory_mb

    def _read_peak_memory_mb(self) -> int:
        try:
            with open(f"/proc/{self.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmHWM:"):
                        return int(line.split()[1]) // 1024
        except (OSError, ValueError):
            pass
        return 0

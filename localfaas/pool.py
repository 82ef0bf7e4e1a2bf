"""The execution environments of one function: warm reuse, the concurrency limit, the machine's
cap on environments with its short queue, throttling, idle reaping, and code deployments that let
invocations in flight finish on the old code.

Two limits, counted differently:
- The concurrency limit is Lambda's (ReservedConcurrentExecutions, else the host's --concurrency, which
  stands in for the account's): invocations in flight, running or waiting for an environment. A
  synchronous invocation beyond it gets 429 at once, exactly as on AWS.
- The environment cap is the machine's (--max-environments, sized to the CPUs by default): at most
  that many processes per function. Lambda would start another environment; a 2-core machine gains
  nothing from 24 processes but memory, cold starts that compete for the same cores and wake-ups.
  An invocation that finds every environment busy waits in a FIFO line for the next one to come
  free; a synchronous one that has not started within --queue-seconds gets 429, as if throttled.
  The line is bounded in length by the concurrency limit, which counts the waiting invocations.
  When the limit is not above the cap (a reserved concurrency of 1, say) the line is empty and
  behaviour is Lambda's to the letter: 429 at once.
Asynchronous and event-source invocations wait in the same line without a time bound, as they
waited for capacity before; they count toward the limit once they run, as Lambda's queued events do.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from localfaas.environment import Environment, State, lambda_environment
from localfaas.invocation import Invocation, InvocationOutcome, Throttled
from localfaas.logs import LogSink
from localfaas.template import FunctionSpec

DEFAULT_QUEUE_SECONDS = 10.0
# The reason a synchronous caller is given when it waited too long for one of the machine's
# environments: the machine plays the account, whose limit is ConcurrentInvocationLimitExceeded.
QUEUE_TIMEOUT_REASON = "ConcurrentInvocationLimitExceeded"


def default_max_environments(cpus: int | None = None) -> int:
    """Environments per function when --max-environments is not given: 2 per CPU, at least 4.
    A warm invocation of the task system's functions uses a few ms of CPU and then waits on Redis,
    RabbitMQ or the next function, so a few environments per core keep the cores busy; more only
    add processes, and at a cold start every one of them is an init of 0.25-0.35 s of CPU competing
    for the same cores (measured on 2 cores, 24 clients: the first 100 tasks were accepted in about
    2 s with 4 environments per function, 5 s with 8, 7 s with 24). The floor leaves room for
    invocations that hold an environment while they wait (a long-poll for a result)."""
    return max(4, 2 * (cpus or os.cpu_count() or 1))


@dataclass(eq=False)
class _Waiter:
    """An invocation in line for an environment; `handed` gets the environment, or None when the
    waiter gave up (a synchronous caller after --queue-seconds)."""

    synchronous: bool
    handed: asyncio.Future[Environment | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class FunctionPool:
    def __init__(self, spec: FunctionSpec, settings: Mapping[str, str], logs: LogSink,
                 default_concurrency: int, max_environments: int | None = None,
                 queue_seconds: float = DEFAULT_QUEUE_SECONDS) -> None:
        self.spec = spec
        self.generation = 1
        self.code_sha256 = spec.code_sha256()
        self.deployed_at = time.time()
        self._settings = settings
        self._variables = lambda_environment(spec, settings)
        self._logs = logs
        self._default_concurrency = default_concurrency
        self._max_environments = max_environments or default_max_environments()
        self._queue_seconds = queue_seconds
        self._environments: set[Environment] = set()
        self._idle: list[Environment] = []  # a stack: the most recently used is reused first
        self._line: deque[_Waiter] = deque()  # invocations waiting for an environment, oldest first
        self._running = 0  # invocations that hold an environment
        self._waiting_sync = 0  # synchronous invocations in the line: they count toward the limit
        self.invocations = 0
        self.throttles = 0
        self.queued = 0  # invocations that had to wait in line, since the start
        self.queue_timeouts = 0

    @property
    def max_concurrency(self) -> int:
        reserved = self.spec.reserved_concurrency
        return self._default_concurrency if reserved is None else reserved

    @property
    def max_environments(self) -> int:
        """The processes this function may have: the machine's cap, or its concurrency limit when
        that is lower (a reserved concurrency is the function's own cap and wins)."""
        return min(self._max_environments, self.max_concurrency)

    @property
    def throttle_reason(self) -> str:
        if self.spec.reserved_concurrency is None:
            return "ConcurrentInvocationLimitExceeded"
        return "ReservedFunctionConcurrentInvocationLimitExceeded"

    def counts(self) -> dict[str, int]:
        busy = sum(1 for e in self._environments if e.state is State.BUSY)
        return {"environments": len(self._environments), "warm": len(self._idle), "busy": busy,
                "waiting": len(self._line), "generation": self.generation,
                "invocations": self.invocations, "throttles": self.throttles, "queued": self.queued,
                "queue_timeouts": self.queue_timeouts, "max_concurrency": self.max_concurrency,
                "max_environments": self.max_environments}

    async def invoke(self, invocation: Invocation, *, wait_for_capacity: bool = False) -> InvocationOutcome:
        """Run one invocation. A synchronous caller (wait_for_capacity False) is throttled
        (Throttled) at the concurrency limit, and when it waited --queue-seconds in line for an
        environment; asynchronous and event-source invocations wait as long as it takes."""
        # The line is first come, first served: nobody takes an environment past those waiting.
        environment = None if self._line else self._take()
        if environment is None:
            if not wait_for_capacity and self._running + self._waiting_sync >= self.max_concurrency:
                self.throttles += 1
                raise Throttled(self.throttle_reason)
            environment = await self._wait_in_line(synchronous=not wait_for_capacity)
        self.invocations += 1
        try:
            if environment.state is State.INIT and environment.pid is None:
                await environment.start()
            await environment.invoke(invocation)
        finally:
            self._release(environment)
        return invocation.outcome.result()

    async def _wait_in_line(self, synchronous: bool) -> Environment:
        waiter = _Waiter(synchronous)
        self._line.append(waiter)
        self.queued += 1
        timer = None
        if synchronous:
            self._waiting_sync += 1
            timer = asyncio.get_running_loop().call_later(self._queue_seconds, self._give_up, waiter)
        try:
            environment = await asyncio.shield(waiter.handed)
        except asyncio.CancelledError:  # the caller went away while in line
            if waiter.handed.done() and waiter.handed.result() is not None:
                self._put_back(waiter.handed.result())
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._leave_line(waiter)
        if environment is None:
            self.throttles += 1
            self.queue_timeouts += 1
            raise Throttled(QUEUE_TIMEOUT_REASON)
        return environment

    def _give_up(self, waiter: _Waiter) -> None:
        if not waiter.handed.done():
            waiter.handed.set_result(None)
            self._leave_line(waiter)

    def _leave_line(self, waiter: _Waiter) -> None:
        if waiter in self._line:
            self._line.remove(waiter)
            if waiter.synchronous:
                self._waiting_sync -= 1

    def _take(self) -> Environment | None:
        """A warm environment (the most recently used), else a new one if the cap allows; it
        counts as running from here on."""
        environment = None
        while self._idle and environment is None:
            candidate = self._idle.pop()
            # Taken off the idle stack, it is the caller's: its invoke() makes it BUSY.
            if candidate.state is State.IDLE and candidate.generation == self.generation:
                environment = candidate
        if environment is None and len(self._environments) < self.max_environments:
            environment = Environment(self.spec, self.generation, self._variables, self._logs, self._forget)
            self._environments.add(environment)
        if environment is not None:
            self._running += 1
        return environment

    def _release(self, environment: Environment) -> None:
        self._running -= 1
        if environment.state is State.DEAD:
            self._forget(environment)
        elif environment.state is State.INIT or environment.generation != self.generation:
            # Still INIT after an invocation: its process could not be started. Either way it
            # must not hold a place under the cap.
            environment.stop()
            self._forget(environment)
        else:
            self._idle.append(environment)
        self._hand_over()

    def _put_back(self, environment: Environment) -> None:
        """An environment handed to a waiter that had gone: unused, so it is idle (or new) still."""
        self._running -= 1
        if environment.state is State.INIT and environment.pid is None:
            self._environments.discard(environment)  # never started: nothing to stop
        elif environment.state is State.IDLE:
            self._idle.append(environment)
        self._hand_over()

    def _forget(self, environment: Environment) -> None:
        self._environments.discard(environment)
        if environment in self._idle:
            self._idle.remove(environment)
        self._hand_over()

    def _hand_over(self) -> None:
        """Give free environments (or room for new ones) to the oldest waiters."""
        while self._line:
            waiter = self._line[0]
            if waiter.handed.done():  # gave up already
                self._leave_line(waiter)
                continue
            environment = self._take()
            if environment is None:
                return
            self._leave_line(waiter)
            waiter.handed.set_result(environment)

    async def deploy(self, spec: FunctionSpec) -> bool:
        """Switch to new code if it changed: new invocations get new environments, those in
        flight finish on the old ones, which are then retired. Returns whether it changed."""
        digest = spec.code_sha256()
        if digest == self.code_sha256 and spec == self.spec:
            return False
        self.spec, self.code_sha256, self.deployed_at = spec, digest, time.time()
        self._variables = lambda_environment(spec, self._settings)
        self.generation += 1
        idle, self._idle = self._idle, []
        for environment in idle:
            self._environments.discard(environment)
            environment.stop()
        self._hand_over()
        return True

    async def reap_idle(self, idle_seconds: float) -> None:
        cutoff = time.monotonic() - idle_seconds
        for environment in [e for e in self._idle if e.last_used < cutoff]:
            self._idle.remove(environment)
            self._environments.discard(environment)
            environment.stop()

    async def stop(self) -> None:
        environments = list(self._environments)
        for environment in environments:
            environment.stop()
        await asyncio.wait_for(asyncio.gather(*(e.wait_closed() for e in environments)), 10)
        self._environments.clear()
        self._idle.clear()

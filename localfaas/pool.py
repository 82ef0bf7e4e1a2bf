"""The execution environments of one function: warm reuse, the concurrency limit, paced cold
starts with a short line before them, throttling, idle reaping, and code deployments that let
invocations in flight finish on the old code.

Lambda starts an environment for every concurrent invocation. Done literally on a small machine,
a burst of 24 clients starts 24 processes per function at once: their inits (0.3 s of CPU each)
compete for the same cores, and nothing is answered until they are done. So cold starts are paced
(Pacing): an invocation that finds every environment busy waits in a first-come, first-served line
for the next one to come free, and a new environment is started for the line's head only when
- the function has fewer than `base` environments, or
- the head has waited `after` seconds and fewer than `base` environments are free to churn: the
  others are held by invocations that have run longer than `after` (a long-poll, a slow function),
and never more than `in_flight` cold starts at a time per function. A burst of short calls is then
served by a few warm environments; an invocation stuck behind held ones gets its own environment
after `after` seconds plus a cold start, as Lambda would give it one (without the wait).

The limits, counted differently:
- The concurrency limit is Lambda's (ReservedConcurrentExecutions, else the host's --concurrency, which
  stands in for the account's): invocations in flight, running or waiting in line. A synchronous
  invocation beyond it gets 429 at once, exactly as on AWS. There are never more environments.
- --max-environments, when an operator sets it, is a hard cap on processes per function (unset by
  default): beyond it invocations wait in the line however long the others hold theirs.
- A synchronous invocation that has not started within --queue-seconds gets 429, as if throttled.
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

from localfaas.environment import INIT_TIME_LIMIT, Environment, State, lambda_environment
from localfaas.invocation import Invocation, InvocationOutcome, Throttled
from localfaas.logs import LogSink
from localfaas.template import FunctionSpec

DEFAULT_QUEUE_SECONDS = 10.0
# A provisioned environment's init may run this long, or the function's timeout if longer (Lambda's
# limit for provisioned concurrency, where the 10 s of an on-demand init do not apply).
PROVISIONED_INIT_SECONDS = 130.0
# The reason a synchronous caller is given when it waited too long for an environment: the
# machine plays the account, whose limit is ConcurrentInvocationLimitExceeded.
QUEUE_TIMEOUT_REASON = "ConcurrentInvocationLimitExceeded"


def default_base_environments(cpus: int | None = None) -> int:
    """Environments started for the line without waiting: 2 per CPU, at least 4. A warm
    invocation of the task system's functions uses a few ms of CPU and then waits on Redis,
    RabbitMQ or the next function, so a few environments per core keep the cores busy."""
    return max(4, 2 * (cpus or os.cpu_count() or 1))


@dataclass(frozen=True)
class Pacing:
    """When the line gets a new environment (see the module's docstring)."""

    base: int = field(default_factory=default_base_environments)
    # Seconds. Measured on 2 cores with 24 submitters and 24 long-pollers: at 0.1 s, calls slowed by
    # the machine's load counted as held and the pool grew to 17-22 producer environments (1-1.3 GB,
    # +50% CPU per task); at 0.5 s it stayed at 4 and 4 (350 MB), and held long-polls still got
    # their own environments (100 tasks accepted in 3.4 s behind 16 of them).
    after: float = 0.5
    in_flight: int = 2  # cold starts at a time, per function


@dataclass(eq=False)
class _Waiter:
    """An invocation in line for an environment; `handed` gets the environment, or None when the
    waiter gave up (a synchronous caller after --queue-seconds)."""

    synchronous: bool
    since: float = field(default_factory=time.monotonic)
    handed: asyncio.Future[Environment | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class FunctionPool:
    def __init__(self, spec: FunctionSpec, settings: Mapping[str, str], logs: LogSink,
                 default_concurrency: int, max_environments: int | None = None,
                 queue_seconds: float = DEFAULT_QUEUE_SECONDS, pacing: Pacing | None = None) -> None:
        self.spec = spec
        self.generation = 1
        self.code_sha256 = spec.code_sha256()
        self.deployed_at = time.time()
        self._settings = settings
        self._variables = lambda_environment(spec, settings)
        self._logs = logs
        self._default_concurrency = default_concurrency
        self._hard_cap = max_environments
        self._queue_seconds = queue_seconds
        self.pacing = pacing or Pacing()
        self._environments: set[Environment] = set()
        self._idle: list[Environment] = []  # a stack: the most recently used is reused first
        self._line: deque[_Waiter] = deque()  # invocations waiting for an environment, oldest first
        # When each busy environment was handed its invocation, and whether that was its first
        # (then its init came first, and the invocation began only when the init was over).
        self._busy_since: dict[Environment, tuple[float, bool]] = {}
        self._recheck: asyncio.TimerHandle | None = None
        self._provisioning: set[asyncio.Task[int]] = set()  # replacements under way
        self._stopping = False
        self._running = 0  # invocations that hold an environment
        self._waiting_sync = 0  # synchronous invocations in the line: they count toward the limit
        self.invocations = 0
        self.throttles = 0
        self.queued = 0  # invocations that had to wait in line, since the start
        self.queue_timeouts = 0
        self.cold_starts = 0
        self.most_in_flight = 0  # the most cold starts at a time seen, since the start

    @property
    def max_concurrency(self) -> int:
        reserved = self.spec.reserved_concurrency
        return self._default_concurrency if reserved is None else reserved

    @property
    def max_environments(self) -> int:
        """The processes this function may have: its concurrency limit, or the operator's hard
        cap (--max-environments) when that is lower."""
        limit = self.max_concurrency
        return limit if self._hard_cap is None else min(self._hard_cap, limit)

    @property
    def throttle_reason(self) -> str:
        if self.spec.reserved_concurrency is None:
            return "ConcurrentInvocationLimitExceeded"
        return "ReservedFunctionConcurrentInvocationLimitExceeded"

    def counts(self) -> dict[str, int]:
        busy = sum(1 for e in self._environments if e.state is State.BUSY)
        return {"environments": len(self._environments), "warm": len(self._idle), "busy": busy,
                "waiting": len(self._line), "starting": self._in_flight(),
                "generation": self.generation, "invocations": self.invocations,
                "throttles": self.throttles, "queued": self.queued,
                "queue_timeouts": self.queue_timeouts, "cold_starts": self.cold_starts,
                "most_starting": self.most_in_flight, "max_concurrency": self.max_concurrency,
                "max_environments": self.max_environments, "base_environments": self.pacing.base,
                "provisioned": sum(1 for e in self._environments if e.provisioned and e.initialized
                                   and e.state is not State.DEAD)}

    async def invoke(self, invocation: Invocation, *, wait_for_capacity: bool = False) -> InvocationOutcome:
        """Run one invocation. A synchronous caller (wait_for_capacity False) is throttled
        (Throttled) at the concurrency limit, and when it waited --queue-seconds in line for an
        environment; asynchronous and event-source invocations wait as long as it takes."""
        # The line is first come, first served: nobody takes an environment past those waiting.
        environment = None if self._line else self._take_warm()
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
        if synchronous:
            self._waiting_sync += 1
        self._hand_over()  # a new environment, if the pacing allows one now
        timer = None
        if not waiter.handed.done():
            self.queued += 1
            if synchronous:
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

    def _take_warm(self) -> Environment | None:
        """The most recently used idle environment; it counts as running from here on."""
        while self._idle:
            environment = self._idle.pop()
            # Taken off the idle stack, it is the caller's: its invoke() makes it BUSY.
            if environment.state is State.IDLE and environment.generation == self.generation:
                self._running += 1
                self._busy_since[environment] = (time.monotonic(), False)
                return environment
        return None

    def _in_flight(self) -> int:
        """Cold starts under way: environments whose init is not over."""
        return sum(1 for e in self._environments if not e.initialized and e.state is not State.DEAD)

    def _cold_start(self, now: float) -> Environment | None:
        """A new environment for the line's head, if the pacing allows one now."""
        environments = len(self._environments)
        in_flight = self._in_flight()
        if environments >= self.max_environments or in_flight >= self.pacing.in_flight:
            return None
        if environments >= self.pacing.base:
            if now - self._line[0].since < self.pacing.after:
                return None
            if environments - self._held(now) >= self.pacing.base:
                return None  # enough environments churn: the line moves without another
        environment = self._new_environment()
        self._running += 1
        self._busy_since[environment] = (now, True)
        self.most_in_flight = max(self.most_in_flight, in_flight + 1)
        return environment

    def _new_environment(self, provisioned: bool = False) -> Environment:
        """A new environment of the current code, counted as a cold start; not started yet."""
        environment = Environment(self.spec, self.generation, self._variables, self._logs, self._forget)
        environment.provisioned = provisioned
        self._environments.add(environment)
        self.cold_starts += 1
        return environment

    def _held(self, now: float) -> int:
        """Environments whose invocation has run longer than `after` (after any init)."""
        held = 0
        for environment, (since, cold) in self._busy_since.items():
            if cold:
                if not environment.initialized:
                    continue  # a cold start: it will be free to churn soon
                since += (environment.init_ms or 0.0) / 1000
            if now - since >= self.pacing.after:
                held += 1
        return held

    def _release(self, environment: Environment) -> None:
        self._running -= 1
        self._busy_since.pop(environment, None)
        if environment.state is State.DEAD:
            self._forget(environment)
        elif environment.state is State.INIT or environment.generation != self.generation:
            # Still INIT after an invocation: its process could not be started. Either way it
            # must not hold a place among the environments.
            environment.stop()
            self._forget(environment)
        else:
            self._idle.append(environment)
        self._hand_over()

    def _put_back(self, environment: Environment) -> None:
        """An environment handed to a waiter that had gone: unused, so it is idle (or new) still."""
        self._running -= 1
        self._busy_since.pop(environment, None)
        if environment.state is State.INIT and environment.pid is None:
            self._environments.discard(environment)  # never started: nothing to stop
        elif environment.state is State.IDLE:
            self._idle.append(environment)
        self._hand_over()

    def _forget(self, environment: Environment) -> None:
        self._environments.discard(environment)
        self._busy_since.pop(environment, None)
        if environment in self._idle:
            self._idle.remove(environment)
        if environment.provisioned and environment.initialized and environment.generation == self.generation:
            # Lambda keeps the provisioned count: one lost after its init is replaced (one whose
            # init failed is not, or a broken init would be retried in a loop).
            self._replace_provisioned()
        self._hand_over()

    # Provisioned concurrency ----------------------------------------------------------------------

    async def provision(self) -> int:
        """Lambda's provisioned concurrency: initializes environments, all at once, until the
        function has its ProvisionedConcurrentExecutions of them, before any invocation needs
        them; they are never reaped for idleness. Returns how many are ready."""
        alive = sum(1 for e in self._environments
                    if e.provisioned and e.generation == self.generation and e.state is not State.DEAD)
        wanted = max(0, self.spec.provisioned_concurrency - alive)
        return sum(await asyncio.gather(*(self._provision_one() for _ in range(wanted))))

    async def _provision_one(self) -> int:
        environment = self._new_environment(provisioned=True)
        await environment.start()
        limit = max(PROVISIONED_INIT_SECONDS, INIT_TIME_LIMIT, self.spec.timeout)
        try:
            ready = await asyncio.wait_for(environment.wait_initialized(), limit)
        except TimeoutError:
            ready = False
        if not ready or environment.generation != self.generation or self._stopping:
            environment.stop()
            return 0
        environment.last_used = time.monotonic()
        self._idle.append(environment)
        self._hand_over()
        return 1

    def _replace_provisioned(self) -> None:
        if self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self.provision())
        self._provisioning.add(task)
        task.add_done_callback(self._provisioning.discard)

    def _hand_over(self) -> None:
        """Give free environments, or new ones as the pacing allows, to the oldest waiters."""
        now = time.monotonic()
        while self._line:
            waiter = self._line[0]
            if waiter.handed.done():  # gave up already
                self._leave_line(waiter)
                continue
            environment = self._take_warm() or self._cold_start(now)
            if environment is None:
                break
            self._leave_line(waiter)
            waiter.handed.set_result(environment)
        # While someone waits, look again soon: the head's wait, an invocation's run and a cold
        # start all cross their marks with no event of their own here.
        if self._line and self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_later(
                max(0.01, self.pacing.after / 4), self._look_again)

    def _look_again(self) -> None:
        self._recheck = None
        self._hand_over()

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
        if spec.provisioned_concurrency:
            self._replace_provisioned()  # the new code's provisioned environments
        return True

    async def reap_idle(self, idle_seconds: float) -> None:
        cutoff = time.monotonic() - idle_seconds
        for environment in [e for e in self._idle if e.last_used < cutoff and not e.provisioned]:
            self._idle.remove(environment)
            self._environments.discard(environment)
            environment.stop()

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._provisioning):
            task.cancel()
        if self._recheck is not None:
            self._recheck.cancel()
        environments = list(self._environments)
        for environment in environments:
            environment.stop()
        await asyncio.wait_for(asyncio.gather(*(e.wait_closed() for e in environments)), 10)
        self._environments.clear()
        self._idle.clear()

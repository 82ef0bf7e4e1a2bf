"""The execution environments of one function: warm reuse, the concurrency cap, throttling,
idle reaping, and code deployments that let invocations in flight finish on the old code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from localfaas.environment import Environment, State, lambda_environment
from localfaas.invocation import Invocation, InvocationOutcome, Throttled
from localfaas.logs import LogSink
from localfaas.template import FunctionSpec


class FunctionPool:
    def __init__(self, spec: FunctionSpec, settings: Mapping[str, str], logs: LogSink,
                 default_concurrency: int) -> None:
        self.spec = spec
        self.generation = 1
        self.code_sha256 = spec.code_sha256()
        self.deployed_at = time.time()
        self._settings = settings
        self._variables = lambda_environment(spec, settings)
        self._logs = logs
        self._default_concurrency = default_concurrency
        self._environments: set[Environment] = set()
        self._idle: list[Environment] = []  # a stack: the most recently used is reused first
        self._capacity_waiters: list[asyncio.Future[None]] = []
        self.invocations = 0
        self.throttles = 0

    @property
    def max_concurrency(self) -> int:
        reserved = self.spec.reserved_concurrency
        return self._default_concurrency if reserved is None else reserved

    @property
    def throttle_reason(self) -> str:
        if self.spec.reserved_concurrency is None:
            return "ConcurrentInvocationLimitExceeded"
        return "ReservedFunctionConcurrentInvocationLimitExceeded"

    def counts(self) -> dict[str, int]:
        busy = sum(1 for e in self._environments if e.state is State.BUSY)
        return {"environments": len(self._environments), "warm": len(self._idle), "busy": busy,
                "generation": self.generation, "invocations": self.invocations,
                "throttles": self.throttles, "max_concurrency": self.max_concurrency}

    async def invoke(self, invocation: Invocation, *, wait_for_capacity: bool = False) -> InvocationOutcome:
        """Run one invocation. Raises Throttled when at the cap, unless the caller waits for
        capacity (asynchronous and event-source invocations do; synchronous callers do not)."""
        environment = self._acquire()
        while environment is None:
            if not wait_for_capacity:
                self.throttles += 1
                raise Throttled(self.throttle_reason)
            waiter = asyncio.get_running_loop().create_future()
            self._capacity_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._capacity_waiters:
                    self._capacity_waiters.remove(waiter)
            environment = self._acquire()
        self.invocations += 1
        try:
            if environment.state is State.INIT and environment.pid is None:
                await environment.start()
            await environment.invoke(invocation)
        finally:
            self._release(environment)
        return invocation.outcome.result()

    def _acquire(self) -> Environment | None:
        while self._idle:
            environment = self._idle.pop()
            # Taken off the idle stack, it is the caller's: its invoke() makes it BUSY.
            if environment.state is State.IDLE and environment.generation == self.generation:
                return environment
        if len(self._environments) >= self.max_concurrency:
            return None
        environment = Environment(self.spec, self.generation, self._variables, self._logs, self._forget)
        self._environments.add(environment)
        return environment

    def _release(self, environment: Environment) -> None:
        if environment.state is State.DEAD:
            self._forget(environment)
        elif environment.generation != self.generation:
            environment.stop()
            self._forget(environment)
        else:
            self._idle.append(environment)
        self._wake_one()

    def _forget(self, environment: Environment) -> None:
        self._environments.discard(environment)
        if environment in self._idle:
            self._idle.remove(environment)
        self._wake_one()

    def _wake_one(self) -> None:
        for waiter in self._capacity_waiters:
            if not waiter.done():
                waiter.set_result(None)
                return

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
        self._wake_one()
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

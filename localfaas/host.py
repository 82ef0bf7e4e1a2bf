"""The host: loads the template, owns the function pools (each environment opens its own Runtime
API), the listeners (function URLs, the control port), the MQ event source mappings and the
schedules."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from localfaas.api import LambdaApi
from localfaas.aws import MAX_PAYLOAD_BYTES
from localfaas.backoff import Backoff
from localfaas.environment import DEFAULT_RUNTIME_CLIENT, RUNTIME_CLIENT_SETTING, RuntimeClient
from localfaas.http11 import HttpServer
from localfaas.httpserver import bare_server
from localfaas.invocation import Invocation, InvocationOutcome, new_request_id
from localfaas.logs import ConsoleMode, LogSink
from localfaas.pool import DEFAULT_QUEUE_SECONDS, FunctionPool, Pacing
from localfaas.settings import host_settings, parameter_key
from localfaas.template import FunctionSpec, Template, load_template
from localfaas.urls import TOO_LARGE, FunctionUrl


@dataclass
class HostConfig:
    template: Path
    env_file: Path | None = None
    parameter_overrides: Mapping[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 4566
    url_port_base: int | None = None  # None: the ports after the control port (ephemeral if 0)
    run_dir: Path = Path(".localfaas")
    default_concurrency: int = 32
    max_environments: int | None = None  # a hard cap per function; None: the concurrency limit
    pacing: Pacing = field(default_factory=Pacing)  # when the line gets a new environment
    queue_seconds: float = DEFAULT_QUEUE_SECONDS  # a synchronous invocation's wait for an environment
    idle_seconds: float = 300.0
    async_retry_seconds: float = 60.0  # Lambda waits ~1 min, then ~2 min, between async retries
    minute_seconds: float = 60.0  # shorten schedule rates for development
    console: ConsoleMode = ConsoleMode.QUIET  # or FULL: every function log line on the console, too
    summary_seconds: float = 10.0  # the quiet console's summary line, when something ran
    runtime_client: RuntimeClient = DEFAULT_RUNTIME_CLIENT  # what every environment runs


ASYNC_RETRIES = 2  # Lambda retries a failed Event invocation twice


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class Host:
    def __init__(self, config: HostConfig, console: TextIO | None = None) -> None:
        self.config = config
        self.settings = host_settings(config.env_file)
        for key, value in config.parameter_overrides.items():
            if parameter_key(key) == parameter_key("RABBITMQ_URL"):
                self.settings["RABBITMQ_URL"] = value  # the MQ mappings' broker, too
        self.settings[RUNTIME_CLIENT_SETTING] = config.runtime_client.value  # read by lambda_environment
        self.logs = LogSink(config.run_dir / "logs", console, config.console, config.summary_seconds)
        self.started_at = time.time()
        self._control_socket = _listen(config.host, config.port)
        self._url_sockets: dict[str, socket.socket] = {}
        self.template: Template = self._load_template()
        self.logs.align(self.template.functions)
        self.region = next(iter(self.template.functions.values())).region \
            if self.template.functions else "us-east-1"
        self._pools = {name: FunctionPool(spec, self.settings, self.logs, config.default_concurrency,
                                          config.max_environments, config.queue_seconds, config.pacing)
                       for name, spec in self.template.functions.items()}
        self._runners: list[web.BaseRunner] = []
        self._url_servers: list[HttpServer] = []
        self._mappings: list[Any] = []  # MqMapping, imported only when a template has MQ events
        self._background: set[asyncio.Task[Any]] = set()

    # -- set-up -------------------------------------------------------------------------------

    def _load_template(self) -> Template:
        return load_template(self.config.template, self.settings, self.config.parameter_overrides,
                             self._url_for)

    def _url_for(self, logical_id: str) -> str:
        if logical_id not in self._url_sockets:
            if self.config.url_port_base is not None:
                port = self.config.url_port_base + len(self._url_sockets)
            else:
                port = self.config.port + 1 + len(self._url_sockets) if self.config.port else 0
            self._url_sockets[logical_id] = _listen(self.config.host, port)
        port = self._url_sockets[logical_id].getsockname()[1]
        return f"http://{self.config.host}:{port}/"

    @property
    def endpoint(self) -> str:
        return f"http://{self.config.host}:{self._control_socket.getsockname()[1]}"

    async def start(self) -> None:
        api = bare_server(LambdaApi(self).handle, MAX_PAYLOAD_BYTES + 1024)
        api_runner = web.ServerRunner(api, access_log=None, handle_signals=False)
        await api_runner.setup()
        await web.SockSite(api_runner, self._control_socket).start()
        self._runners.append(api_runner)
        for spec in self.template.functions.values():
            if spec.url is None:
                continue
            url = FunctionUrl(lambda name=spec.name: self._pools[name].spec, self._invoke_url,
                              self._url_secrets())
            server = HttpServer(url.handle, MAX_PAYLOAD_BYTES, TOO_LARGE)
            self._url_for(spec.logical_id)  # binds the socket if no !GetAtt asked for it yet
            await server.start(self._url_sockets[spec.logical_id])
            self._url_servers.append(server)
        loop = asyncio.get_running_loop()
        broker_url = self.settings.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
        for spec in self.template.functions.values():
            for event in spec.mq_events:
                if not event.enabled:
                    continue
                from localfaas.mq import MqMapping  # pika is loaded only when it is needed

                mapping = MqMapping(spec.name, event, broker_url, self._mq_invoker(spec.name),
                                    loop, self.logs)
                mapping.start()
                self._mappings.append(mapping)
            for schedule in spec.schedule_events:
                if schedule.enabled:
                    from localfaas.schedule import Scheduler

                    scheduler = Scheduler(spec.name, schedule, self._fire_schedule, self.region,
                                          self.config.minute_seconds)
                    self._spawn(scheduler.run())
        self._spawn(self._housekeeping())
        await self._provision()
        self._write_state()
        self._announce()

    async def _provision(self) -> None:
        """Provisioned concurrency is ready before the host says it is up, as a deployment with it
        completes only once its environments are initialized."""
        pools = [pool for pool in self._pools.values() if pool.spec.provisioned_concurrency]
        started = time.monotonic()
        ready_counts = await asyncio.gather(*(pool.provision() for pool in pools))
        for pool, ready in zip(pools, ready_counts, strict=True):
            self.logs.host(f"function {pool.spec.name}: {ready} of {pool.spec.provisioned_concurrency} "
                           f"provisioned environments ready after {time.monotonic() - started:.1f} s")

    def _url_secrets(self) -> dict[str, str]:
        """The credentials AWS_IAM function URLs accept: the env file's local key pair."""
        key, secret = self.settings.get("AWS_ACCESS_KEY_ID"), self.settings.get("AWS_SECRET_ACCESS_KEY")
        return {key: secret} if key and secret else {}

    def _announce(self) -> None:
        for warning in self.template.warnings:
            self.logs.host(f"warning: {warning}")
        for spec in self.template.functions.values():
            url = self.url_of(spec.name) if spec.url else "(no URL)"
            self.logs.host(f"function {spec.name}: {url}")
            for event in spec.mq_events:
                self.logs.host(f"  mq {event.name}: queue {event.queue} on vhost {event.virtual_host}, "
                               f"batch {event.batch_size}, window {event.window_seconds}s")
            for schedule in spec.schedule_events:
                self.logs.host(f"  schedule {schedule.name}: {schedule.expression}")
        for name, value in self.template.outputs.items():
            self.logs.host(f"output {name}: {value}")
        self.logs.host(f"Lambda API on {self.endpoint} (run folder {self.config.run_dir})")
        if self.logs.full:
            self.logs.host(f"function logs: every line here and in {self.logs.directory}/<function>.log")
        else:
            self.logs.host(f"function logs: {self.logs.directory}/<function>.log; here only cold starts, "
                           f"errors and a summary every {self.config.summary_seconds:g} s "
                           f"(--console full shows every line)")

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "endpoint": self.endpoint,
            "urls": {spec.name: self.url_of(spec.name)
                     for spec in self.template.functions.values() if spec.url},
            "outputs": self.template.outputs,
            "warnings": self.template.warnings,
        }
        path = self.config.run_dir / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    async def stop(self) -> None:
        for mapping in self._mappings:
            await mapping.close()
        for task in self._background:
            task.cancel()
        for pool in self._pools.values():
            await pool.stop()
        for server in self._url_servers:
            server.close()
        for runner in self._runners:
            await runner.cleanup()
        self.logs.close()
        (self.config.run_dir / "state.json").unlink(missing_ok=True)

    # -- invoking -----------------------------------------------------------------------------

    def function(self, name: str) -> FunctionSpec | None:
        spec = self.template.function(name)
        return self._pools[spec.name].spec if spec else None

    def functions(self) -> list[FunctionSpec]:
        return [pool.spec for pool in self._pools.values()]

    def pool(self, name: str) -> FunctionPool:
        return self._pools[name]

    def url_of(self, name: str) -> str:
        return self._url_for(self._pools[name].spec.logical_id)

    async def invoke(self, name: str, invocation: Invocation, *,
                     wait_for_capacity: bool = False) -> InvocationOutcome:
        return await self._pools[name].invoke(invocation, wait_for_capacity=wait_for_capacity)

    async def _invoke_url(self, spec: FunctionSpec, invocation: Invocation) -> InvocationOutcome:
        return await self._pools[spec.name].invoke(invocation)

    def _mq_invoker(self, name: str):
        async def invoke(payload: bytes) -> InvocationOutcome:
            return await self.invoke(name, Invocation(payload), wait_for_capacity=True)

        return invoke

    def invoke_async(self, name: str, payload: bytes) -> str:
        """Queue an Event invocation; like Lambda, retry a failed one twice, waiting between."""
        request_id = new_request_id()
        self._spawn(self._run_async(name, payload, request_id))
        return request_id

    async def _run_async(self, name: str, payload: bytes, request_id: str) -> None:
        backoff = Backoff(first=self.config.async_retry_seconds)  # ~1 min, then ~2
        for retry in range(ASYNC_RETRIES + 1):
            invocation = Invocation(payload, request_id=request_id)
            outcome = await self.invoke(name, invocation, wait_for_capacity=True)
            if outcome.ok or retry == ASYNC_RETRIES:
                return
            delay = backoff.delay(retry)
            self.logs.host(f"{name}: async invocation {request_id} failed "
                           f"({outcome.error_type}); retrying in {delay:.0f}s")
            await asyncio.sleep(delay)

    def _fire_schedule(self, name: str, payload: bytes) -> None:
        self.invoke_async(name, payload)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                self.logs.summarize(self._environment_counts)
                self.logs.flush()
                for pool in self._pools.values():
                    await pool.reap_idle(self.config.idle_seconds)
            except Exception as error:  # one failure must not stop the log flushes and the reaping
                self.logs.host(f"housekeeping failed: {error!r}")

    def _environment_counts(self) -> dict[str, int]:
        return {name: pool.counts()["environments"] for name, pool in self._pools.items()}

    # -- control ------------------------------------------------------------------------------

    async def deploy(self) -> list[str]:
        """Re-read the template and switch every function whose code or configuration changed."""
        template = self._load_template()
        changed = []
        for name, pool in self._pools.items():
            spec = template.functions.get(name)
            if spec is not None and await pool.deploy(spec):
                changed.append(name)
                self.logs.host(f"deployed {name} (generation {pool.generation})")
        return changed

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "functions": {
                name: {**pool.counts(),
                       "url": self.url_of(name) if pool.spec.url else None,
                       "timeout": pool.spec.timeout}
                for name, pool in self._pools.items()
            },
            "mappings": [mapping.status() for mapping in self._mappings],
        }

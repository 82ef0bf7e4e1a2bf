"""The Lambda API on the control port (rest-json, as boto3 speaks it), plus localfaas's own
status and deploy endpoints under /_localfaas/ for the CLI."""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import unquote

from aiohttp import web

from localfaas.aws import (
    MAX_ASYNC_PAYLOAD_BYTES,
    MAX_PAYLOAD_BYTES,
    event_source_mapping_arn,
    function_arn,
    layer_arn,
    role_arn,
)
from localfaas.invocation import Invocation, InvocationOutcome, Throttled
from localfaas.template import FunctionSpec, MqEvent

Route = Callable[[web.BaseRequest, str], Awaitable[web.Response]]


class InvocationType(enum.StrEnum):
    """Invoke's X-Amz-Invocation-Type."""

    REQUEST_RESPONSE = "RequestResponse"  # run it now and answer with its result
    EVENT = "Event"  # queue it (retried twice on failure), answer 202 at once
    DRY_RUN = "DryRun"  # only check that the call would be accepted


class DeployedCode(Protocol):
    """A function's current code, as GetFunction describes it."""

    code_sha256: str  # hex
    deployed_at: float  # epoch seconds


class FunctionHost(Protocol):
    """What the Lambda API asks of the host (localfaas.host.Host is one): the functions, invoking
    them, and the status and deploy the CLI uses. The API knows nothing else of the host."""

    region: str
    started_at: float  # epoch seconds

    def function(self, name: str) -> FunctionSpec | None:
        """By name, logical id or ARN."""
        ...

    def functions(self) -> list[FunctionSpec]: ...

    def pool(self, name: str) -> DeployedCode: ...

    def url_of(self, name: str) -> str: ...

    async def invoke(self, name: str, invocation: Invocation) -> InvocationOutcome:
        """Run it now; raises Throttled when the function is at its concurrency limit."""
        ...

    def invoke_async(self, name: str, payload: bytes) -> str:
        """Queue an Event invocation; returns its request id."""
        ...

    def status(self) -> dict[str, Any]: ...

    async def deploy(self) -> list[str]:
        """Reload changed functions; returns their names. ValueError: the template is unusable."""
        ...


def api_error(status: int, error_type: str, message: str, **extra: Any) -> web.Response:
    body = {"Type": "User", "message": message, "Message": message, **extra}
    return web.json_response(body, status=status, headers={"x-amzn-ErrorType": error_type})


def _timestamp(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def function_configuration(spec: FunctionSpec, code_sha256: str, modified: float) -> dict[str, Any]:
    return {
        "FunctionName": spec.name,
        "FunctionArn": spec.arn,
        "Runtime": spec.runtime,
        "Role": role_arn(f"{spec.name}-role"),
        "Handler": spec.handler,
        "CodeSize": 0,
        "Description": spec.description,
        "Timeout": int(spec.timeout),
        "MemorySize": spec.memory_mb,
        "LastModified": _timestamp(modified),
        "CodeSha256": base64.b64encode(bytes.fromhex(code_sha256)).decode(),
        "Version": "$LATEST",
        "Environment": {"Variables": dict(spec.environment)},
        "TracingConfig": {"Mode": "PassThrough"},
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "EphemeralStorage": {"Size": 512},
        "Layers": [{"Arn": layer_arn(spec.region, d.name),
                    "CodeSize": 0} for d in spec.layer_dirs],
        "LoggingConfig": {"LogFormat": "Text", "LogGroup": f"/aws/lambda/{spec.name}"},
    }


def event_source_mapping(spec: FunctionSpec, event: MqEvent, modified: float,
                         status: Mapping[str, Any] | None) -> dict[str, Any]:
    """An MQ event as EventSourceMappingConfiguration (botocore's lambda service-2.json). The
    UUID is derived from the function and event names, so it is the same for every listing."""
    mapping_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{spec.arn}/events/{event.name}"))
    if status is None:
        result = "No records processed"
    elif not status["connected"] and status["last_error"]:
        result = f"PROBLEM: {status['last_error']}"
    else:
        result = "OK" if status["acked"] else "No records processed"  # a batch went through
    return {
        "UUID": mapping_id,
        "BatchSize": event.batch_size,
        "MaximumBatchingWindowInSeconds": int(event.window_seconds),
        "EventSourceArn": event.broker_arn,
        "FunctionArn": spec.arn,
        "LastModified": modified,  # rest-json timestamps are epoch seconds
        "LastProcessingResult": result,
        "State": "Enabled" if event.enabled else "Disabled",
        "StateTransitionReason": "USER_INITIATED",
        "Queues": [event.queue],
        # BASIC_AUTH's secret is not used locally (the broker URL setting has the credentials).
        "SourceAccessConfigurations": [{"Type": "VIRTUAL_HOST", "URI": event.virtual_host}],
        "EventSourceMappingArn": event_source_mapping_arn(spec.region, mapping_id),
    }


def _page(request: web.BaseRequest, key: str, items: list[dict[str, Any]], page_size: int) -> web.Response:
    """One page of a List operation: `Marker` is the offset a previous page's NextMarker gave,
    `MaxItems` asks for fewer than the page size (Lambda never sends more)."""
    marker, max_items = request.query.get("Marker") or "0", request.query.get("MaxItems")
    if not marker.isdigit() or int(marker) > len(items):
        return api_error(400, "InvalidParameterValueException", f"Invalid Marker: {marker}")
    if max_items is not None and not (max_items.isdigit() and int(max_items) >= 1):
        return api_error(400, "InvalidParameterValueException",
                         f"MaxItems must be a positive integer, not {max_items!r}")
    start = int(marker)
    size = min(page_size, int(max_items)) if max_items is not None else page_size
    body: dict[str, Any] = {key: items[start:start + size]}
    if start + size < len(items):
        body["NextMarker"] = str(start + size)
    return web.json_response(body)


class LambdaApi:
    def __init__(self, host: FunctionHost) -> None:
        self.host = host
        # Matched in order by a bare aiohttp server: Invoke is on every API call's hot path, and
        # a dozen fixed routes do not need the Application router and middleware machinery.
        self._routes: list[tuple[str, re.Pattern[str], Route]] = [
            ("POST", re.compile(r"/2015-03-31/functions/(?P<name>[^/]+)/invocations"), self.invoke),
            ("GET", re.compile(r"/2015-03-31/functions/?"), self.list_functions),
            ("GET", re.compile(r"/2015-03-31/functions/(?P<name>[^/]+)"), self.get_function),
            ("GET", re.compile(r"/2015-03-31/functions/(?P<name>[^/]+)/configuration"),
             self.get_configuration),
            ("GET", re.compile(r"/2021-10-31/functions/(?P<name>[^/]+)/url"), self.get_url_config),
            ("GET", re.compile(r"/2021-10-31/functions/(?P<name>[^/]+)/urls"), self.list_url_configs),
            ("GET", re.compile(r"/2015-03-31/event-source-mappings/?"), self.list_event_source_mappings),
            ("GET", re.compile(r"/2015-03-31/event-source-mappings/(?P<name>[^/]+)"),
             self.get_event_source_mapping),
            ("GET", re.compile(r"/_localfaas/status"), self.status),
            ("POST", re.compile(r"/_localfaas/deploy"), self.deploy),
        ]

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.rel_url.raw_path
        for method, pattern, route in self._routes:
            match = pattern.fullmatch(path)
            if match and request.method == method:
                return await route(request, unquote(match.groupdict().get("name") or ""))
        return api_error(404, "UnknownOperationException", f"no such operation: {request.method} {path}")

    def _function(self, name: str) -> FunctionSpec | web.Response:
        spec = self.host.function(name)
        if spec is None:
            arn = name if name.startswith("arn:") else function_arn(self.host.region, name)
            return api_error(404, "ResourceNotFoundException", f"Function not found: {arn}")
        return spec

    async def invoke(self, request: web.BaseRequest, name: str) -> web.Response:
        spec = self._function(name)
        if isinstance(spec, web.Response):
            return spec
        kind_header = request.headers.get("X-Amz-Invocation-Type", InvocationType.REQUEST_RESPONSE)
        payload = await request.read()
        client_context = request.headers.get("X-Amz-Client-Context")
        if client_context:
            try:
                client_context = base64.b64decode(client_context, validate=True).decode()
                if not isinstance(json.loads(client_context), dict):
                    raise ValueError("not an object")
            except (binascii.Error, ValueError):
                return api_error(400, "InvalidRequestContentException",
                                 "Client context must be a valid Base64-encoded JSON object.")
        try:
            kind = InvocationType(kind_header)
        except ValueError:
            return api_error(400, "InvalidParameterValueException", f"invalid invocation type {kind_header}")
        if kind is InvocationType.DRY_RUN:
            return web.Response(status=204)
        limit = MAX_ASYNC_PAYLOAD_BYTES if kind is InvocationType.EVENT else MAX_PAYLOAD_BYTES
        if len(payload) > limit:
            return api_error(413, "RequestTooLargeException",
                             f"Request must be smaller than {limit} bytes for the InvokeFunction operation")
        if payload:
            try:
                json.loads(payload)
            except ValueError:
                return api_error(400, "InvalidRequestContentException",
                                 "Could not parse request body into json")
        if kind is InvocationType.EVENT:
            request_id = self.host.invoke_async(spec.name, payload or b"{}")
            return web.Response(status=202, headers={"x-amzn-RequestId": request_id})
        tail = request.headers.get("X-Amz-Log-Type") == "Tail"
        invocation = Invocation(
            payload or b"{}",
            client_context=client_context or None,
            log_lines=[] if tail else None,
        )
        try:
            outcome = await self.host.invoke(spec.name, invocation)
        except Throttled as throttle:
            return api_error(429, "TooManyRequestsException", "Rate Exceeded.", Reason=throttle.reason)
        headers = {"X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": outcome.request_id}
        if outcome.function_error:
            headers["X-Amz-Function-Error"] = "Unhandled"
        if tail and invocation.log_lines is not None:
            text = "\n".join(invocation.log_lines).encode()[-4096:]
            headers["X-Amz-Log-Result"] = base64.b64encode(text).decode()
        return web.Response(status=200, body=outcome.body, headers=headers,
                            content_type=outcome.content_type.split(";")[0])

    async def list_functions(self, request: web.BaseRequest, name: str) -> web.Response:
        configurations = [self._configuration(spec) for spec in self.host.functions()]
        return _page(request, "Functions", configurations, page_size=50)

    async def get_function(self, request: web.BaseRequest, name: str) -> web.Response:
        spec = self._function(name)
        if isinstance(spec, web.Response):
            return spec
        body: dict[str, Any] = {
            "Configuration": self._configuration(spec),
            "Code": {"RepositoryType": "S3", "Location": spec.code_dir.as_uri()},
            "Tags": {},
        }
        if spec.reserved_concurrency is not None:
            body["Concurrency"] = {"ReservedConcurrentExecutions": spec.reserved_concurrency}
        return web.json_response(body)

    async def get_configuration(self, request: web.BaseRequest, name: str) -> web.Response:
        spec = self._function(name)
        if isinstance(spec, web.Response):
            return spec
        return web.json_response(self._configuration(spec))

    async def get_url_config(self, request: web.BaseRequest, name: str) -> web.Response:
        spec = self._function(name)
        if isinstance(spec, web.Response):
            return spec
        if spec.url is None:
            return api_error(404, "ResourceNotFoundException",
                             f"The resource you requested does not exist. (function {spec.name} has no URL)")
        return web.json_response(self._url_config(spec))

    async def list_url_configs(self, request: web.BaseRequest, name: str) -> web.Response:
        """ListFunctionUrlConfigs: a function has at most one URL here ($LATEST, no aliases)."""
        spec = self._function(name)
        if isinstance(spec, web.Response):
            return spec
        configs = [self._url_config(spec)] if spec.url is not None else []
        return _page(request, "FunctionUrlConfigs", configs, page_size=50)

    async def list_event_source_mappings(self, request: web.BaseRequest, name: str) -> web.Response:
        """ListEventSourceMappings, filtered by FunctionName (name or ARN) and EventSourceArn."""
        mappings = self._event_source_mappings()
        wanted = request.query.get("FunctionName")
        if wanted:
            spec = self.host.function(wanted)
            # AWS answers an empty list for a function with no mappings; so for an unknown one.
            mappings = [m for m in mappings if spec is not None and m["FunctionArn"] == spec.arn]
        source = request.query.get("EventSourceArn")
        if source:
            mappings = [m for m in mappings if m["EventSourceArn"] == source]
        return _page(request, "EventSourceMappings", mappings, page_size=100)

    async def get_event_source_mapping(self, request: web.BaseRequest, name: str) -> web.Response:
        for mapping in self._event_source_mappings():
            if mapping["UUID"] == name:
                return web.json_response(mapping)
        return api_error(404, "ResourceNotFoundException",
                         f"The resource you requested does not exist. (Service: Lambda, mapping {name})")

    def _event_source_mappings(self) -> list[dict[str, Any]]:
        """The template's MQ events as Lambda describes event source mappings, with what the
        running consumers report (a disabled event has no consumer)."""
        running = {(m["function"], m["queue"], m["vhost"]): m for m in self.host.status()["mappings"]}
        mappings = []
        for spec in self.host.functions():
            for event in spec.mq_events:
                status = running.get((spec.name, event.queue, event.virtual_host)) if event.enabled else None
                mappings.append(event_source_mapping(spec, event, self.host.started_at, status))
        return mappings

    def _url_config(self, spec: FunctionSpec) -> dict[str, Any]:
        assert spec.url is not None
        created = _timestamp(self.host.started_at)
        body: dict[str, Any] = {
            "FunctionUrl": self.host.url_of(spec.name),
            "FunctionArn": spec.arn,
            "AuthType": spec.url.auth_type,
            "CreationTime": created,
            "LastModifiedTime": created,
            "InvokeMode": spec.url.invoke_mode,
        }
        if spec.url.cors:
            cors = spec.url.cors
            body["Cors"] = {
                "AllowOrigins": list(cors.allow_origins), "AllowMethods": list(cors.allow_methods),
                "AllowHeaders": list(cors.allow_headers), "ExposeHeaders": list(cors.expose_headers),
                "AllowCredentials": cors.allow_credentials, "MaxAge": cors.max_age,
            }
        return body

    async def status(self, request: web.BaseRequest, name: str) -> web.Response:
        return web.json_response(self.host.status())

    async def deploy(self, request: web.BaseRequest, name: str) -> web.Response:
        try:
            changed = await self.host.deploy()
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"deployed": changed})

    def _configuration(self, spec: FunctionSpec) -> dict[str, Any]:
        pool = self.host.pool(spec.name)
        return function_configuration(spec, pool.code_sha256, pool.deployed_at)

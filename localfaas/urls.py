"""Function URLs: an HTTP listener per function, payload format 2.0 in, AWS's response mapping
out, CORS answered from the configuration (docs/lambda_behaviours.md §4)."""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict

from localfaas import sigv4
from localfaas.aws import ACCOUNT_ID, MAX_PAYLOAD_BYTES, user_arn
from localfaas.invocation import Invocation, InvocationOutcome, Throttled, new_request_id, new_trace_id
from localfaas.sigv4 import Caller
from localfaas.template import AuthType, CorsConfig, FunctionSpec

_TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml")

Invoker = Callable[[FunctionSpec, Invocation], Awaitable[InvocationOutcome]]


@functools.lru_cache(maxsize=256)
def url_id(function_name: str) -> str:
    """A stable 32-character id, as AWS derives one per function."""
    digest = hashlib.sha256(function_name.encode()).digest()
    return base64.b32encode(digest).decode().lower()[:32]


def is_text(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";")[0].strip().lower().startswith(_TEXT_TYPES)


def build_event(request: web.BaseRequest, body: bytes, spec: FunctionSpec, request_id: str,
                trace_id: str, caller: Caller | None = None) -> dict[str, Any]:
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers.items():
        key = name.lower()
        if key == "cookie":
            cookies += [c.strip() for c in value.split(";") if c.strip()]
        elif key in headers:
            headers[key] += "," + value
        else:
            headers[key] = value
    peer = request.remote or "127.0.0.1"
    host = headers.get("host", f"{url_id(spec.name)}.lambda-url.{spec.region}.on.aws")
    headers.setdefault("x-amzn-trace-id", trace_id.split(";")[0])
    headers.setdefault("x-forwarded-for", peer)
    headers.setdefault("x-forwarded-proto", "http")
    headers.setdefault("x-forwarded-port", str(request.url.port or 80))
    url = request.rel_url
    now = time.time()
    auth_type = spec.url.auth_type if spec.url else AuthType.NONE
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": url.raw_path,
        "rawQueryString": url.raw_query_string,
        "headers": headers,
    }
    if cookies:
        event["cookies"] = cookies
    if url.raw_query_string:
        query: dict[str, str] = {}
        for key, value in parse_qsl(url.raw_query_string, keep_blank_values=True):
            query[key] = f"{query[key]},{value}" if key in query else value
        event["queryStringParameters"] = query
    event["requestContext"] = {
        "accountId": "anonymous" if auth_type is AuthType.NONE else ACCOUNT_ID,
        "apiId": url_id(spec.name),
        "domainName": host,
        "domainPrefix": host.split(".")[0],
        "http": {
            "method": request.method,
            "path": url.path,
            "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
            "sourceIp": peer,
            "userAgent": request.headers.get("User-Agent", ""),
        },
        "requestId": request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": _request_time(int(now)),
        "timeEpoch": int(now * 1000),
    }
    if caller is not None:
        event["requestContext"]["authorizer"] = {"iam": {
            "accessKey": caller.access_key, "accountId": ACCOUNT_ID, "callerId": caller.access_key,
            "cognitoIdentity": None, "principalOrgId": None,
            "userArn": user_arn(caller.access_key), "userId": caller.access_key,
        }}
    if body:
        event["body"], event["isBase64Encoded"] = event_body(body, request.headers.get("Content-Type"))
    else:
        event["isBase64Encoded"] = False
    return event


def event_body(body: bytes, content_type: str | None) -> tuple[str, bool]:
    """The event's `body` and `isBase64Encoded`. Text types travel as text, everything else
    base64-encoded, as Lambda does. A text-typed body that is not UTF-8 is base64-encoded too: as
    text it would have to be altered (errors="replace" made b"\\xff" a valid U+FFFD), and the
    function must see the bytes it was sent to refuse them. AWS does not document this case;
    LocalStack encodes any non-ASCII body the same way."""
    if is_text(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode(), True


def _too_large() -> web.Response:
    return web.json_response({"message": f"Request must be smaller than {MAX_PAYLOAD_BYTES} bytes "
                                         "for the InvokeFunction operation"}, status=413)


@functools.lru_cache(maxsize=4)
def _request_time(second: int) -> str:
    # Formatting a date is the costliest step of building an event; it changes once a second.
    return datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


class BadGateway(Exception):
    """The function answered something a function URL cannot turn into an HTTP response."""


def map_response(outcome: InvocationOutcome) -> web.Response:
    if outcome.function_error:
        raise BadGateway(outcome.error_type or "Unhandled")
    try:
        result = json.loads(outcome.body) if outcome.body else None
    except ValueError:
        # awslambdaric posts a handler's bytes as they are; pass them through.
        return web.Response(body=outcome.body, content_type="application/octet-stream")
    if not (isinstance(result, dict) and "statusCode" in result):
        return web.Response(body=outcome.body or b"null", content_type="application/json")
    try:
        status = int(result["statusCode"])
        headers = CIMultiDict({str(k): str(v) for k, v in (result.get("headers") or {}).items()})
        for cookie in result.get("cookies") or []:
            headers.add("Set-Cookie", str(cookie))
        raw_body = result.get("body")
        if raw_body is not None and not isinstance(raw_body, str):
            raise BadGateway("body is not a string")
        body = (raw_body or "").encode()
        if result.get("isBase64Encoded"):
            body = base64.b64decode(body, validate=True)
    except (TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise BadGateway(str(exc)) from exc
    return web.Response(status=status, body=body, headers=headers)


def cors_headers(cors: CorsConfig, origin: str, preflight: bool) -> dict[str, str]:
    if "*" not in cors.allow_origins and origin not in cors.allow_origins:
        return {}
    headers = {"Access-Control-Allow-Origin": origin if cors.allow_credentials or "*" not in
               cors.allow_origins else "*"}
    if cors.allow_credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    if preflight:
        if cors.allow_methods:
            headers["Access-Control-Allow-Methods"] = ",".join(cors.allow_methods)
        if cors.allow_headers:
            headers["Access-Control-Allow-Headers"] = ",".join(cors.allow_headers)
        if cors.max_age:
            headers["Access-Control-Max-Age"] = str(cors.max_age)
    elif cors.expose_headers:
        headers["Access-Control-Expose-Headers"] = ",".join(cors.expose_headers)
    return headers


class FunctionUrl:
    """The HTTP handler behind one function's URL."""

    def __init__(self, spec_of: Callable[[], FunctionSpec], invoke: Invoker,
                 secrets: Mapping[str, str]) -> None:
        self._spec_of = spec_of
        self._invoke = invoke
        self._secrets = secrets  # access key id -> secret key, for AuthType AWS_IAM

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        spec = self._spec_of()
        cors = spec.url.cors if spec.url else None
        origin = request.headers.get("Origin")
        if cors and origin and request.method == "OPTIONS" and \
                "Access-Control-Request-Method" in request.headers:
            return web.Response(status=200, headers=cors_headers(cors, origin, preflight=True))
        if request.version == (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            # The bare aiohttp Server does not answer Expect itself (an Application would);
            # without it curl waits a second before sending any body over 1 KiB.
            if (request.content_length or 0) > MAX_PAYLOAD_BYTES:
                return _too_large()
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        body = await request.read()
        caller = None
        if spec.url is not None and spec.url.auth_type is AuthType.AWS_IAM:
            try:
                caller = sigv4.verify(request.method, request.rel_url.raw_path,
                                      request.rel_url.raw_query_string,
                                      {k.lower(): v for k, v in request.headers.items()}, body,
                                      self._secrets, spec.region)
            except sigv4.Refused as refusal:
                return web.json_response({"Message": f"Forbidden. {refusal}"}, status=403,
                                         headers={"x-amzn-ErrorType": "AccessDeniedException"})
        request_id, trace_id = new_request_id(), new_trace_id()
        response = await self._respond(request, body, spec, request_id, trace_id, caller)
        if cors and origin:
            response.headers.update(cors_headers(cors, origin, preflight=False))
        response.headers["x-amzn-RequestId"] = request_id
        response.headers["X-Amzn-Trace-Id"] = trace_id.split(";")[0]
        return response

    async def _respond(self, request: web.BaseRequest, body: bytes, spec: FunctionSpec,
                       request_id: str, trace_id: str, caller: Caller | None) -> web.Response:
        if len(body) > MAX_PAYLOAD_BYTES:
            return _too_large()
        event = build_event(request, body, spec, request_id, trace_id, caller)
        invocation = Invocation(json.dumps(event).encode(), request_id=request_id, trace_id=trace_id)
        try:
            outcome = await self._invoke(spec, invocation)
            return map_response(outcome)
        except Throttled:
            return web.json_response({"message": "Rate Exceeded."}, status=429,
                                     headers={"x-amzn-ErrorType": "TooManyRequestsException"})
        except BadGateway:
            return web.Response(status=502, text="Internal Server Error", content_type="text/plain")

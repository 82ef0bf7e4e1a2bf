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
from urllib.parse import parse_qsl, unquote

from localfaas import sigv4
from localfaas.aws import ACCOUNT_ID, MAX_PAYLOAD_BYTES, user_arn
from localfaas.http11 import HttpReply, HttpRequest
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


def build_event(request: HttpRequest, spec: FunctionSpec, request_id: str, trace_id: str,
                caller: Caller | None = None) -> dict[str, Any]:
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for key, value in request.headers:  # names arrive lower-cased
        if key == "cookie":
            cookies += [c.strip() for c in value.split(";") if c.strip()]
        elif key in headers:
            headers[key] += "," + value
        else:
            headers[key] = value
    peer = request.peer
    host = headers.get("host", f"{url_id(spec.name)}.lambda-url.{spec.region}.on.aws")
    headers.setdefault("x-amzn-trace-id", trace_id.split(";")[0])
    headers.setdefault("x-forwarded-for", peer)
    headers.setdefault("x-forwarded-proto", "http")
    headers.setdefault("x-forwarded-port", _port(host))
    raw_query = request.query
    now = time.time()
    auth_type = spec.url.auth_type if spec.url else AuthType.NONE
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": request.path,
        "rawQueryString": raw_query,
        "headers": headers,
    }
    if cookies:
        event["cookies"] = cookies
    if raw_query:
        query: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            query[key] = f"{query[key]},{value}" if key in query else value
        event["queryStringParameters"] = query
    event["requestContext"] = {
        "accountId": "anonymous" if auth_type is AuthType.NONE else ACCOUNT_ID,
        "apiId": url_id(spec.name),
        "domainName": host,
        "domainPrefix": host.split(".")[0],
        "http": {
            "method": request.method,
            "path": unquote(request.path),
            "protocol": f"HTTP/{request.version}",
            "sourceIp": peer,
            "userAgent": request.header("user-agent") or "",
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
    if request.body:
        event["body"], event["isBase64Encoded"] = event_body(request.body, request.header("content-type"))
    else:
        event["isBase64Encoded"] = False
    return event


def _port(host: str) -> str:
    """The port the client addressed, from its Host header (80 when it names none)."""
    name, colon, port = host.rpartition(":")
    return port if colon and port.isdigit() and not name.endswith("[") else "80"


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


_JSON = "application/json; charset=utf-8"
# json.dumps with a fresh event has no cycles to look for; the check costs an eighth of the encoding.
_encode_event = json.JSONEncoder(check_circular=False).encode


def _decode_result(body: bytes) -> object:
    """json.loads(body), without its encoding detection for the UTF-8 that runtimes post."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return json.loads(body)  # UTF-16 or 32 JSON, or not JSON: json.loads says which
    return json.loads(text)
TOO_LARGE = HttpReply(413, json.dumps({"message": f"Request must be smaller than {MAX_PAYLOAD_BYTES} bytes "
                                                  "for the InvokeFunction operation"}).encode(),
                      [("Content-Type", _JSON)])


@functools.lru_cache(maxsize=4)
def _request_time(second: int) -> str:
    # Formatting a date is the costliest step of building an event; it changes once a second.
    return datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


class BadGateway(Exception):
    """The function answered something a function URL cannot turn into an HTTP response."""


def map_response(outcome: InvocationOutcome) -> HttpReply:
    if outcome.function_error:
        raise BadGateway(outcome.error_type or "Unhandled")
    try:
        result = _decode_result(outcome.body) if outcome.body else None
    except ValueError:
        # awslambdaric posts a handler's bytes as they are; pass them through.
        return HttpReply(200, outcome.body, [("Content-Type", "application/octet-stream")])
    if not (isinstance(result, dict) and "statusCode" in result):
        return HttpReply(200, outcome.body or b"null", [("Content-Type", "application/json")])
    try:
        status = int(result["statusCode"])
        if not 100 <= status <= 599:
            raise BadGateway(f"statusCode {status}")
        headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
        headers += [("Set-Cookie", str(cookie)) for cookie in result.get("cookies") or []]
        if any(_unsendable(name, value) for name, value in headers):
            raise BadGateway("a header cannot be sent")
        raw_body = result.get("body")
        if raw_body is not None and not isinstance(raw_body, str):
            raise BadGateway("body is not a string")
        body = (raw_body or "").encode()
        if result.get("isBase64Encoded"):
            body = base64.b64decode(body, validate=True)
    except (TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise BadGateway(str(exc)) from exc
    return HttpReply(status, body, headers)


def _unsendable(name: str, value: str) -> bool:
    # A line break would split the response (header injection); http11.render refuses it too.
    return not name or ":" in name or any(c in text for text in (name, value) for c in "\r\n")


def _replace(headers: list[tuple[str, str]], new: Mapping[str, str]) -> None:
    """Set headers, replacing those of the same name whatever their case (the configured CORS
    headers and the request id take precedence over the function's)."""
    names = {name.lower() for name in new}
    headers[:] = [(k, v) for k, v in headers if k.lower() not in names]
    headers.extend(new.items())


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

    async def handle(self, request: HttpRequest) -> HttpReply:
        spec = self._spec_of()
        cors = spec.url.cors if spec.url else None
        origin = request.header("origin")
        if cors and origin and request.method == "OPTIONS" and \
                request.header("access-control-request-method") is not None:
            return HttpReply(200, b"", list(cors_headers(cors, origin, preflight=True).items()))
        caller = None
        if spec.url is not None and spec.url.auth_type is AuthType.AWS_IAM:
            try:
                caller = sigv4.verify(request.method, request.path, request.query,
                                      dict(request.headers), request.body, self._secrets, spec.region)
            except sigv4.Refused as refusal:
                return HttpReply(403, json.dumps({"Message": f"Forbidden. {refusal}"}).encode(),
                                 [("Content-Type", _JSON), ("x-amzn-ErrorType", "AccessDeniedException")])
        request_id, trace_id = new_request_id(), new_trace_id()
        reply = await self._respond(request, spec, request_id, trace_id, caller)
        if cors and origin:
            _replace(reply.headers, cors_headers(cors, origin, preflight=False))
        _replace(reply.headers, {"x-amzn-RequestId": request_id, "X-Amzn-Trace-Id": trace_id.split(";")[0]})
        return reply

    async def _respond(self, request: HttpRequest, spec: FunctionSpec, request_id: str, trace_id: str,
                       caller: Caller | None) -> HttpReply:
        event = build_event(request, spec, request_id, trace_id, caller)
        invocation = Invocation(_encode_event(event).encode(), request_id=request_id, trace_id=trace_id)
        try:
            outcome = await self._invoke(spec, invocation)
            return map_response(outcome)
        except Throttled:
            return HttpReply(429, json.dumps({"message": "Rate Exceeded."}).encode(),
                             [("Content-Type", _JSON), ("x-amzn-ErrorType", "TooManyRequestsException")])
        except BadGateway:
            return HttpReply(502, b"Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")])

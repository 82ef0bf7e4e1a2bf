"""Lambda function URLs (payload format 2.0) in front of a Chalice app, which only understands the
API Gateway REST (1.0, proxy) event. `handler = function_url_handler(app)`.

Chalice routes by event["requestContext"]["resourcePath"], the route *template*
("/results/{task_id}"), so the adapter matches rawPath against app.routes itself and fills
pathParameters. It answers unknown paths (404) and unsupported methods (405) on its own, in the
API's error shape: Chalice would answer the first with a 500 (it indexes its route table with the
unknown path). Chalice's own error bodies ({"Code", "Message"}: BadRequestError, 415, 500...) are
rewritten into the same shape, so every error the client sees looks alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from taskcore.errors import error_body

Event = dict[str, Any]
Handler = Callable[[Event, Any], Event]


def function_url_handler(app: Any) -> Handler:
    """A Lambda handler that accepts function-URL (2.0) events for the Chalice `app`.
    A 1.0 event (API Gateway REST, `chalice local`-style tests) is passed through unchanged."""

    routes = RouteTable(app.routes)

    def handler(event: Event, context: Any) -> Event:
        if event.get("version") != "2.0":
            return app(event, context)
        method = event["requestContext"]["http"]["method"].upper()
        path = event.get("rawPath") or event["requestContext"]["http"].get("path") or "/"
        matched = routes.match(path)
        if matched is None:
            return _error(404, "not_found", f"no route for {path}", {"path": path})
        template, params = matched
        methods = app.routes[template]
        if method not in methods:
            allowed = sorted(methods)
            return _error(405, "method_not_allowed", f"{method} is not allowed on {template}",
                          {"allowed": allowed}, {"Allow": ", ".join(allowed)})
        return to_v2_response(app(to_v1_event(event, template, params), context))

    return handler


# Routing -------------------------------------------------------------------------------------------

def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


_PARAM = re.compile(r"^\{([^{}]+?)(\+?)\}$")


def match_route(routes: Mapping[str, Any], path: str) -> tuple[str, dict[str, str]] | None:
    """The most specific route template matching `path`, with its (URL-decoded) parameters.
    Literal segments win over parameters, as in API Gateway: /results/stats beats /results/{id}."""
    return RouteTable(routes).match(path)


class RouteTable:
    """match_route's answers without re-reading every template per request: the templates are
    parsed once (no regex per request) and ranked most specific first, and the candidates for a
    path's segment count are kept, so a request tries only those, in order, and the first that
    matches wins. Recompiled when the app's route table changes size (a route added later)."""

    def __init__(self, routes: Mapping[str, Any]) -> None:
        self._routes = routes
        self._size = -1
        self._ranked: list[tuple[str, list[_Segment]]] = []
        self._by_count: dict[int, list[tuple[str, list[_Segment]]]] = {}

    def match(self, path: str) -> tuple[str, dict[str, str]] | None:
        if len(self._routes) != self._size:
            self._compile()
        parts = _segments(path)
        candidates = self._by_count.get(len(parts))
        if candidates is None:
            candidates = self._by_count[len(parts)] = [
                (template, segments) for template, segments in self._ranked
                if len(segments) == len(parts) or any(kind == _PROXY for kind, _ in segments)]
        for template, segments in candidates:
            params = _match(segments, parts)
            if params is not None:
                return template, params
        return None

    def _compile(self) -> None:
        ranked = []
        for template in self._routes:
            segments = [_parse_segment(s) for s in _segments(template)]
            ranked.append((tuple(0 if kind == _LITERAL else 1 for kind, _ in segments), template, segments))
        # sorted() is stable: among equally specific templates the first declared wins.
        ranked.sort(key=lambda entry: entry[0])
        self._ranked = [(template, segments) for _, template, segments in ranked]
        self._by_count = {}
        self._size = len(self._routes)


_LITERAL, _PARAMETER, _PROXY = 0, 1, 2
_Segment = tuple[int, str]  # (kind, the literal text or the parameter's name)


def _parse_segment(segment: str) -> _Segment:
    param = _PARAM.match(segment)
    if param is None:
        return _LITERAL, segment
    return (_PROXY if param.group(2) else _PARAMETER), param.group(1)


def _match(template: list[_Segment], parts: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for index, (kind, value) in enumerate(template):
        if kind == _PROXY:  # {proxy+}: the rest of the path, at least one segment
            if index >= len(parts):
                return None
            params[value] = unquote("/".join(parts[index:]))
            return params
        if index >= len(parts):
            return None
        if kind == _PARAMETER:
            params[value] = unquote(parts[index])
        elif unquote(parts[index]) != value:
            return None
    return params if len(parts) == len(template) else None


# Events --------------------------------------------------------------------------------------------

def to_v1_event(event: Event, template: str, params: dict[str, str]) -> Event:
    """The REST-API proxy event Chalice's Request reads, built from a 2.0 event."""
    context = event.get("requestContext") or {}
    http = context.get("http") or {}
    path = event.get("rawPath") or http.get("path") or "/"
    headers = dict(event.get("headers") or {})
    if event.get("cookies"):
        # 2.0 moves Cookie headers into `cookies`; 1.0 keeps them as a header.
        headers["cookie"] = "; ".join(event["cookies"])
    multi_query = _query(event)
    return {
        "resource": template,
        "path": path,
        "httpMethod": http.get("method", "GET").upper(),
        "headers": headers,
        # 2.0 joins repeated headers with ","; splitting again would break values such as dates.
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} if multi_query else None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": params or None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": template,
            "httpMethod": http.get("method", "GET").upper(),
            "path": path,
            "requestId": context.get("requestId", ""),
            "stage": context.get("stage", "$default"),
            "accountId": context.get("accountId"),
            "apiId": context.get("apiId"),
            "domainName": context.get("domainName"),
            "protocol": http.get("protocol"),
            "requestTimeEpoch": context.get("timeEpoch"),
            "identity": {"sourceIp": http.get("sourceIp"), "userAgent": http.get("userAgent")},
            "authorizer": context.get("authorizer"),
        },
        "body": event.get("body"),
        "isBase64Encoded": bool(event.get("isBase64Encoded", False)),
    }


def _query(event: Event) -> dict[str, list[str]]:
    raw = event.get("rawQueryString")
    multi: dict[str, list[str]] = {}
    if raw:
        for name, value in parse_qsl(raw, keep_blank_values=True):
            multi.setdefault(name, []).append(value)
    elif event.get("queryStringParameters"):
        multi = {name: [value] for name, value in event["queryStringParameters"].items()}
    return multi


def to_v2_response(response: Event) -> Event:
    """Chalice's 1.0 response as a function-URL response: Set-Cookie headers become `cookies`."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    merged: dict[str, list[str]] = {}
    for name, value in (response.get("headers") or {}).items():
        merged.setdefault(name, []).append(str(value))
    for name, values in (response.get("multiValueHeaders") or {}).items():
        merged.setdefault(name, []).extend(str(v) for v in values)
    for name, values in merged.items():
        if name.lower() == "set-cookie":
            cookies.extend(values)
        else:
            headers[name] = ", ".join(values)
    status = int(response.get("statusCode", 200))
    body = response.get("body")
    base64 = bool(response.get("isBase64Encoded", False))
    if status >= 400 and not base64:
        body = _api_error_body(body)
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    out: Event = {"statusCode": status, "headers": headers, "body": body if body is not None else "",
                  "isBase64Encoded": base64}
    if cookies:
        out["cookies"] = cookies
    return out


def _api_error_body(body: Any) -> Any:
    """Chalice's {"Code": "NotFoundError", "Message": ...} -> {"error": {"code": "not_found", ...}}."""
    try:
        data = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        return body
    if not isinstance(data, dict) or set(data) != {"Code", "Message"}:
        return body
    return json.dumps(error_body(_snake_code(str(data["Code"])), str(data["Message"])))


def _snake_code(name: str) -> str:
    if name in ("InternalServerError", "ChaliceViewError"):
        return "internal_error"
    name = name.removesuffix("Error") or name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _error(status: int, code: str, message: str, details: dict[str, Any],
           headers: dict[str, str] | None = None) -> Event:
    return {"statusCode": status, "headers": {"Content-Type": "application/json", **(headers or {})},
            "body": json.dumps(error_body(code, message, details)), "isBase64Encoded": False}

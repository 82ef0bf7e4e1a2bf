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

    def handler(event: Event, context: Any) -> Event:
        if event.get("version") != "2.0":
            return app(event, context)
        method = event["requestContext"]["http"]["method"].upper()
        path = event.get("rawPath") or event["requestContext"]["http"].get("path") or "/"
        matched = match_route(app.routes, path)
        if matched is None:
            return _error(404, "not_found", f"no route for {path}", {"path": path})
        template, params = matched
        methods = app.routes[template]
        if method not in methods:
            allowed = ", ".join(sorted(methods))
            return _error(405, "method_not_allowed", f"{method} is not allowed on {template}",
                          {"allowed": sorted(methods)}, {"Allow": allowed})
        return to_v2_response(app(to_v1_event(event, template, params), context))

    return handler


# Routing -------------------------------------------------------------------------------------------

def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


_PARAM = re.compile(r"^\{([^{}]+?)(\+?)\}$")


def match_route(routes: Mapping[str, Any], path: str) -> tuple[str, dict[str, str]] | None:
    """The most specific route template matching `path`, with its (URL-decoded) parameters.
    Literal segments win over parameters, as in API Gateway: /results/stats beats /results/{id}."""
    parts = _segments(path)
    best: tuple[tuple[int, ...], str, dict[str, str]] | None = None
    for template in routes:
        params = _match(_segments(template), parts)
        if params is None:
            continue
        rank = tuple(1 if _PARAM.match(s) else 0 for s in _segments(template))
        if best is None or rank < best[0]:
            best = (rank, template, params)
    return None if best is None else (best[1], best[2])


def _match(template: list[str], parts: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for index, segment in enumerate(template):
        param = _PARAM.match(segment)
        if param and param.group(2):  # {proxy+}: the rest of the path, at least one segment
            if index >= len(parts):
                return None
            params[param.group(1)] = unquote("/".join(parts[index:]))
            return params
        if index >= len(parts):
            return None
        if param:
            params[param.group(1)] = unquote(parts[index])
        elif unquote(parts[index]) != segment:
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

"""The 2.0 -> Chalice adapter, with a real small Chalice app."""

from __future__ import annotations

import base64
import json
from typing import Any

from chalice import BadRequestError, Chalice, Response

from taskcore.function_url import function_url_handler, match_route, to_v1_event
from taskcore.http import api_errors, json_response
from taskcore.messages import parse_submission
from taskcore.settings import Settings

app = Chalice(app_name="adapter-test")


@app.route("/results/{task_id}", methods=["GET"])
def result(task_id: str) -> dict[str, Any]:
    request = app.current_request
    return {"task_id": task_id, "query": request.query_params and dict(request.query_params),
            "all": request.query_params and request.query_params.getlist("tag"),
            "path": request.path, "method": request.method}


@app.route("/results/stats", methods=["GET"])
def result_stats() -> dict[str, str]:
    return {"which": "literal"}


@app.route("/produce", methods=["POST"])
def produce() -> Response:
    request = app.current_request
    return Response(body={"got": request.json_body, "raw": request.raw_body.decode(),
                          "cookie": request.headers.get("cookie")},
                    status_code=202, headers={"X-Trace": "t1", "Set-Cookie": "a=1; Path=/"})


@app.route("/upload", methods=["POST"], content_types=["application/octet-stream"])
def upload() -> dict[str, Any]:
    return {"bytes": list(app.current_request.raw_body)}


@app.route("/submit", methods=["POST"], content_types=["application/json"])
@api_errors
def submit() -> Response:
    """As the producer reads a submission: the raw bytes, parsed by taskcore."""
    submission = parse_submission(app.current_request.raw_body or b"", Settings())
    return json_response({"types": [spec.type for spec in submission.tasks]}, 202)


@app.route("/cookies", methods=["GET"])
def cookies() -> Response:
    return Response(body="ok", headers={"Set-Cookie": ["a=1", "b=2"], "Content-Type": "text/plain",
                                        "X-Multi": ["x", "y"]})


@app.route("/bad", methods=["GET"])
def bad() -> None:
    raise BadRequestError("nope")


@app.route("/", methods=["GET"])
def root() -> dict[str, bool]:
    return {"root": True}


handler = function_url_handler(app)


def event(method: str, path: str, query: str = "", body: str | None = None,
          headers: dict[str, str] | None = None, cookies: list[str] | None = None,
          b64: bool = False) -> dict[str, Any]:
    e: dict[str, Any] = {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": {"host": "abc.lambda-url.us-east-1.on.aws", **(headers or {})},
        "requestContext": {"accountId": "anonymous", "apiId": "abc", "domainName": "abc.lambda-url",
                           "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "203.0.113.7", "userAgent": "pytest"},
                           "requestId": "req-1", "routeKey": "$default", "stage": "$default",
                           "time": "01/May/2024:12:00:00 +0000", "timeEpoch": 1714564800000},
        "isBase64Encoded": b64,
    }
    if body is not None:
        e["body"] = body
    if cookies:
        e["cookies"] = cookies
    return e


def call(e: dict[str, Any]) -> tuple[int, dict[str, str], Any, dict[str, Any]]:
    response = handler(e, None)
    raw = response["body"]
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    return response["statusCode"], response["headers"], parsed, response


def test_path_parameters_and_query_strings() -> None:
    status, headers, data, _ = call(event("GET", "/results/abc-1", "wait=5&tag=a&tag=b&empty="))
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert data["task_id"] == "abc-1"
    assert data["query"] == {"wait": "5", "tag": "b", "empty": ""}
    assert data["all"] == ["a", "b"]
    assert data["path"] == "/results/{task_id}"
    assert data["method"] == "GET"


def test_no_query_string_gives_none() -> None:
    assert call(event("GET", "/results/x"))[2]["query"] is None


def test_url_encoded_path_parameter_is_decoded() -> None:
    assert call(event("GET", "/results/a%3Ab"))[2]["task_id"] == "a:b"


def test_literal_route_beats_parameter() -> None:
    assert call(event("GET", "/results/stats"))[2] == {"which": "literal"}


def test_root_and_trailing_slash() -> None:
    assert call(event("GET", "/"))[2] == {"root": True}
    assert call(event("GET", "/results/x/"))[2]["task_id"] == "x"


def test_post_json_body_headers_and_cookies() -> None:
    status, headers, data, response = call(event(
        "POST", "/produce", body='{"type": "sleep"}', headers={"content-type": "application/json"},
        cookies=["session=abc", "theme=dark"]))
    assert status == 202
    assert data == {"got": {"type": "sleep"}, "raw": '{"type": "sleep"}', "cookie": "session=abc; theme=dark"}
    assert headers["X-Trace"] == "t1"
    assert response["cookies"] == ["a=1; Path=/"]
    assert not any(h.lower() == "set-cookie" for h in headers)


def test_base64_body_is_decoded_for_chalice() -> None:
    raw = base64.b64encode(b"\x00\x01\x02\xff").decode()
    status, _, data, _ = call(event("POST", "/upload", body=raw, b64=True,
                                    headers={"content-type": "application/octet-stream"}))
    assert status == 200
    assert data == {"bytes": [0, 1, 2, 255]}


def test_a_json_body_that_is_not_utf8_reaches_the_parser_as_bytes_and_is_refused() -> None:
    """localfaas base64-encodes a text-typed body that is not UTF-8: the bytes reach the parser."""
    json_type = {"content-type": "application/json"}
    bad = base64.b64encode(b'{"type": "hash", "payload": {"data": "\xff\xfe"}}').decode()
    status, _, data, _ = call(event("POST", "/submit", body=bad, b64=True, headers=json_type))
    assert status == 400 and data["error"]["code"] == "malformed_json"
    good = base64.b64encode('{"type": "hash", "payload": {"data": "é"}}'.encode()).decode()
    status, _, data, _ = call(event("POST", "/submit", body=good, b64=True, headers=json_type))
    assert status == 202 and data == {"types": ["hash"]}


def test_multi_value_response_headers() -> None:
    status, headers, data, response = call(event("GET", "/cookies"))
    assert (status, data) == (200, "ok")
    assert response["cookies"] == ["a=1", "b=2"]
    assert headers["X-Multi"] == "x, y"
    assert headers["Content-Type"] == "text/plain"


def test_unknown_path_is_404_in_the_error_shape() -> None:
    status, _, data, _ = call(event("GET", "/nowhere"))
    assert status == 404
    assert data["error"]["code"] == "not_found"
    assert set(data["error"]) == {"code", "message", "details"}
    assert call(event("GET", "/results/a/b"))[0] == 404


def test_wrong_method_is_405_with_allow() -> None:
    status, headers, data, _ = call(event("DELETE", "/produce"))
    assert status == 405
    assert headers["Allow"] == "POST"
    assert data["error"]["code"] == "method_not_allowed"


def test_chalice_errors_are_rewritten_into_the_error_shape() -> None:
    status, _, data, _ = call(event("GET", "/bad"))
    assert status == 400
    assert data == {"error": {"code": "bad_request", "message": "nope", "details": {}}}
    status, _, data, _ = call(event("POST", "/produce", body="{oops",
                                    headers={"content-type": "application/json"}))
    assert status == 400
    assert data["error"]["code"] == "bad_request"
    status, _, data, _ = call(event("POST", "/upload", body="x", headers={"content-type": "text/plain"}))
    assert status == 415
    assert data["error"]["code"] == "unsupported_media_type"


def test_v1_event_shape() -> None:
    v1 = to_v1_event(event("GET", "/results/a", "x=1&x=2"), "/results/{task_id}", {"task_id": "a"})
    assert v1["requestContext"]["resourcePath"] == "/results/{task_id}"
    assert v1["requestContext"]["httpMethod"] == "GET"
    assert v1["requestContext"]["requestId"] == "req-1"
    assert v1["requestContext"]["identity"]["sourceIp"] == "203.0.113.7"
    assert v1["pathParameters"] == {"task_id": "a"}
    assert v1["queryStringParameters"] == {"x": "2"}
    assert v1["multiValueQueryStringParameters"] == {"x": ["1", "2"]}
    assert v1["body"] is None and v1["isBase64Encoded"] is False
    assert v1["resource"] == "/results/{task_id}" and v1["path"] == "/results/a"


def test_v1_events_pass_through() -> None:
    v1 = to_v1_event(event("GET", "/results/a"), "/results/{task_id}", {"task_id": "a"})
    assert handler(v1, None)["statusCode"] == 200


def test_match_route_greedy_parameter() -> None:
    routes = {"/files/{path+}": {}, "/files/readme": {}}
    assert match_route(routes, "/files/a/b%20c") == ("/files/{path+}", {"path": "a/b c"})
    assert match_route(routes, "/files/readme") == ("/files/readme", {})
    assert match_route(routes, "/files") is None


def test_route_table_follows_routes_added_after_the_handler() -> None:
    """The handler's route table is parsed once; a route declared later is still found."""
    late = Chalice(app_name="late-routes")
    late_handler = function_url_handler(late)

    @late.route("/items/{item_id}", methods=["GET"])
    def item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    assert json.loads(late_handler(event("GET", "/items/a%20b"), None)["body"]) == {"item": "a b"}
    assert late_handler(event("GET", "/items"), None)["statusCode"] == 404

    @late.route("/items/special", methods=["GET"])
    def special() -> dict[str, str]:
        return {"item": "special"}

    assert json.loads(late_handler(event("GET", "/items/special"), None)["body"]) == {"item": "special"}
    assert json.loads(late_handler(event("GET", "/items/other"), None)["body"]) == {"item": "other"}


def test_json_response_bytes_are_chalices_own() -> None:
    """json_response encodes the body itself; the bytes are what Chalice's Response would send."""
    body = {"task_id": "a", "result": {"x": [1, 2.5, None, True]}, "text": "é\u2028\"/"}
    assert json_response(body).to_dict()["body"] == Response(body=body).to_dict()["body"]

"""localfaas.sigv4 against botocore's own signer, request by request: what a client signs is
accepted, and any change to what was signed is refused (test_url_auth.py does it through a host)."""

from __future__ import annotations

import datetime
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from localfaas import sigv4

KEY, SECRET, REGION = "AKIDLOCALTEST", "local-test-secret", "us-east-1"
SECRETS = {KEY: SECRET}
HOST = "127.0.0.1:9000"

CASES = [
    ("GET", "/", "", b"", {}),
    ("POST", "/produce", "", b'{"n": 1}', {"Content-Type": "application/json"}),
    ("GET", "/results/a%20b", "wait=10", b"", {}),
    ("GET", "/results", "ids=A,B", b"", {}),
    ("GET", "/q", "b=2&a=1&a=0&c=", b"", {}),
    ("GET", "/a:b/~user/x.txt", "", b"", {}),
    ("GET", "/x/../y/./z", "", b"", {}),
    ("GET", "/%E2%9C%93", "x=%20y", b"", {}),
    ("PUT", "/spaces", "", b"body", {"X-Custom": "  two   spaces  ", "Content-Type": "text/plain"}),
]


def sign(method: str, path: str, query: str, body: bytes, headers: dict[str, str], secret: str = SECRET,
         token: str | None = None, region: str = REGION) -> dict[str, str]:
    url = f"http://{HOST}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    SigV4Auth(Credentials(KEY, secret, token), "lambda", region).add_auth(request)
    signed = {name.lower(): value for name, value in request.headers.items()}
    signed.setdefault("host", urlsplit(url).netloc)  # what the client's HTTP stack sends
    return signed


@pytest.mark.parametrize(("method", "path", "query", "body", "headers"), CASES)
def test_what_botocore_signs_is_accepted(method: str, path: str, query: str, body: bytes,
                                         headers: dict[str, str]) -> None:
    signed = sign(method, path, query, body, headers)
    assert sigv4.verify(method, path, query, signed, body, SECRETS, REGION) == sigv4.Caller(KEY)


@pytest.mark.parametrize(("method", "path", "query", "body", "headers"), CASES)
def test_any_change_to_what_was_signed_is_refused(method: str, path: str, query: str, body: bytes,
                                                  headers: dict[str, str]) -> None:
    signed = sign(method, path, query, body, headers)
    changes = [
        ("PATCH", path, query, signed, body),
        (method, path + "x", query, signed, body),
        (method, path, query + "&extra=1", signed, body),
        (method, path, query, signed, body + b"!"),
        (method, path, query, {**signed, "host": "127.0.0.1:9001"}, body),
        (method, path, query, {**signed, "x-amz-date": signed["x-amz-date"][:-3] + "59Z"}, body),
    ]
    for changed in changes:
        with pytest.raises(sigv4.Refused):
            sigv4.verify(*changed, SECRETS, REGION)


def test_session_token_is_part_of_the_signature() -> None:
    signed = sign("GET", "/t", "", b"", {}, token="session-token")
    assert sigv4.verify("GET", "/t", "", signed, b"", SECRETS, REGION).access_key == KEY
    with pytest.raises(sigv4.Refused):
        sigv4.verify("GET", "/t", "", {**signed, "x-amz-security-token": "other"}, b"", SECRETS, REGION)


def test_signing_key_kept_for_one_secret_is_not_used_for_another() -> None:
    """The derived key is cached: a good signature first, then the same request signed with
    another secret, and one of another region, must still be refused."""
    assert sigv4.verify("GET", "/k", "", sign("GET", "/k", "", b"", {}), b"", SECRETS, REGION)
    with pytest.raises(sigv4.Refused, match="does not match"):
        sigv4.verify("GET", "/k", "", sign("GET", "/k", "", b"", {}, secret="other"), b"", SECRETS, REGION)
    eu = sign("GET", "/k", "", b"", {}, region="eu-west-1")
    assert sigv4.verify("GET", "/k", "", eu, b"", SECRETS, "eu-west-1").access_key == KEY
    with pytest.raises(sigv4.Refused):
        sigv4.verify("GET", "/k", "", eu, b"", SECRETS, REGION)


@pytest.mark.parametrize("amz_date", ["", "2026-12-02T04:30:00Z", "20261302T043000Z", "20261202T043000",
                                      "\uff12\uff10\uff12\uff161202T043000Z"])
def test_malformed_date_is_refused(amz_date: str) -> None:
    signed = {**sign("GET", "/d", "", b"", {}), "x-amz-date": amz_date}
    with pytest.raises(sigv4.Refused):
        sigv4.verify("GET", "/d", "", signed, b"", SECRETS, REGION)


def test_clock_skew_over_fifteen_minutes_is_refused() -> None:
    signed = sign("GET", "/s", "", b"", {})
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=16)
    with pytest.raises(sigv4.Refused, match="expired"):
        sigv4.verify("GET", "/s", "", signed, b"", SECRETS, REGION, now=later)

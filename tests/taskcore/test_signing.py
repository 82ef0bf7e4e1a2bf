"""taskcore.signing against botocore's SigV4Auth, request by request: for the same request and
clock, the same headers out (names, values, order), over generated requests of every shape a
function URL can be called with; and what it signs passes localfaas's verification."""

from __future__ import annotations

import datetime
import random
import string

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from localfaas import sigv4
from taskcore.signing import UNSIGNED_HEADERS, Signer, host_header

KEY, SECRET = "AKIDSIGNINGTEST", "signing/test+secret"

ORIGINS = ["http://127.0.0.1:9000", "http://Example.COM", "http://example.com:80", "https://example.com:443",
           "https://abc123.lambda-url.us-east-1.on.aws", "http://[::1]:8080", "http://localhost:8443"]
# Path segments: escapes (signed encoded again), ':' and other reserved characters, dot segments,
# empty segments (dropped), non-ASCII (signed as UTF-8).
SEGMENTS = ["supervise", "results", "a%20b", "a%2Fb", "%E2%9C%93", "a:b", "~user", "x.txt", ".", "..", "",
            "✓", "it's", "(x)", "a+b", "a=b", "a;b", "a,b", "a@b", "a!b*", "$", "-_."]
QUERY_KEYS = ["ids", "wait", "a", "A", "b", "a%20b", "x", ""]
QUERY_VALUES = ["", "1", "10", "A,B", "%20y", "z=z", "b", "a", "%E2%9C%93", "~"]
HEADER_VALUES = ["application/json", "  two   spaces  ", "x", "a\tb", "", "text/plain; charset=utf-8"]


def random_request(rng: random.Random) -> tuple[str, str, bytes, dict[str, str]]:
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "post"])
    path = "/" + "/".join(rng.choice(SEGMENTS) for _ in range(rng.randrange(0, 5)))
    if rng.random() < 0.2:
        path = path.rstrip("/") + "/"
    url = rng.choice(ORIGINS) + path
    if rng.random() < 0.6:  # repeated keys, unsorted pairs, pairs without '=', empty pairs
        pairs = []
        for _ in range(rng.randrange(0, 6)):
            key = rng.choice(QUERY_KEYS)
            pairs.append(key if rng.random() < 0.1 else f"{key}={rng.choice(QUERY_VALUES)}")
        url += "?" + "&".join(pairs)
    noise = bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
    body = rng.choice([b"", b'{"type": "hash"}', noise])
    headers: dict[str, str] = {}
    for name in rng.sample(["Content-Type", "X-Custom", "x-custom", "User-Agent", "Connection", "Expect",
                            "X-Amzn-Trace-Id", "Authorization", "X-Amz-Date", "x-amz-security-token",
                            "X-Amz-Content-SHA256", "Host", "Accept", "Date"], rng.randrange(0, 6)):
        if name == "Date" and rng.random() < 0.7:
            continue  # rarer: botocore then signs a Date header instead of X-Amz-Date
        value = rng.choice(HEADER_VALUES)
        if name == "Host":
            value = host_header(url) if rng.random() < 0.7 else "other.example:1"
        headers[name] = value
    return method, url, body, headers


def botocore_headers(method: str, url: str, body: bytes, headers: dict[str, str], token: str | None,
                     region: str, at: datetime.datetime,
                     monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *args, **kwargs: at)
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    SigV4Auth(Credentials(KEY, SECRET, token), "lambda", region).add_auth(request)
    return list(request.headers.items())


def test_the_headers_never_signed_are_botocores() -> None:
    assert frozenset(botocore.auth.SIGNED_HEADERS_BLACKLIST) == UNSIGNED_HEADERS


@pytest.mark.parametrize("seed", range(8))
def test_same_headers_as_botocore_for_the_same_request_and_clock(seed: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    token = "".join(rng.choices(string.ascii_letters + "/+=", k=40)) if seed % 2 else None
    region = rng.choice(["us-east-1", "eu-west-3"])
    signer = Signer(KEY, SECRET, region, token)  # one signer for many requests: its key cache is used
    for _ in range(250):
        seconds = rng.randrange(946_684_800, 2_082_758_400)  # 2000 to 2036: days and years change
        at = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)
        method, url, body, headers = random_request(rng)
        expected = botocore_headers(method, url, body, headers, token, region, at, monkeypatch)
        got = signer.headers(method, url, body, headers, now=seconds + rng.random())
        assert list(got.items()) == expected, (method, url, body, headers)


def test_the_signing_key_follows_the_day(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = Signer(KEY, SECRET, "us-east-1")
    url = "http://127.0.0.1:9000/supervise"
    for seconds in (1_764_633_599, 1_764_633_600, 1_764_633_599, 1_764_720_000):  # around midnights
        at = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)
        expected = botocore_headers("POST", url, b"{}", {}, None, "us-east-1", at, monkeypatch)
        assert list(signer.headers("POST", url, b"{}", now=seconds).items()) == expected


def test_what_it_signs_localfaas_accepts_and_a_change_it_refuses() -> None:
    signer = Signer(KEY, SECRET, "us-east-1", "a-session-token")
    url = "http://127.0.0.1:9000/results/a%20b:c?wait=10&ids=B,A"
    signed = signer.headers("GET", url, b"", {"Host": host_header(url)})
    headers = {name.lower(): value for name, value in signed.items()}
    path, query = "/results/a%20b:c", "wait=10&ids=B,A"
    assert sigv4.verify("GET", path, query, headers, b"", {KEY: SECRET}, "us-east-1").access_key == KEY
    with pytest.raises(sigv4.Refused):
        sigv4.verify("GET", path, "wait=11&ids=B,A", headers, b"", {KEY: SECRET}, "us-east-1")


def test_from_env() -> None:
    assert Signer.from_env({}) is None
    signer = Signer.from_env({"AWS_ACCESS_KEY_ID": "K", "AWS_SECRET_ACCESS_KEY": "S",
                              "AWS_REGION": "eu-west-3", "AWS_SESSION_TOKEN": "T"})
    assert signer is not None
    assert (signer.access_key, signer.secret_key, signer.region, signer.token) == ("K", "S", "eu-west-3", "T")

"""SigV4 signing of calls to function URLs with `AuthType: AWS_IAM` (the supervisor's, and the
producer's when its auth type is AWS_IAM), exactly as botocore's `SigV4Auth.add_auth` signs an
`AWSRequest`: the same headers out, byte for byte, for the same request and clock
(tests/taskcore/test_signing.py compares the two over generated requests).

It is our own and not botocore's because the producer signs every submission it forwards:
botocore's signer builds an AWSRequest (email.message headers), derives the signing key anew
(four HMACs) and costs ~0.2 ms a request, and importing it is most of the producer's cold start.
Here the signing key is derived once per day (the region and service are the signer's), a URL's
canonical path, query and host are worked out once per URL, and a request costs two SHA-256
(body, canonical request) and one HMAC.

On Lambda the credentials are the execution role's (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN in the environment); locally they are the env file's key pair, which localfaas
also accepts."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

SERVICE = "lambda"  # function URLs are signed for the lambda service
ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# Never signed (botocore's SIGNED_HEADERS_BLACKLIST, as of 1.44): proxies, HTTP stacks and tracing
# may add, change or drop them on the way.
UNSIGNED_HEADERS = frozenset({
    "baggage", "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "traceparent", "tracestate", "trailer", "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Signer:
    def __init__(self, access_key: str, secret_key: str, region: str, token: str | None = None) -> None:
        self.access_key, self.secret_key, self.region, self.token = access_key, secret_key, region, token
        self._scope_tail = f"/{region}/{SERVICE}/aws4_request"
        # (day, signing key) of the last day signed for: one attribute, so that a thread never sees
        # one day's key with another's date (bench and the CLI sign from several threads).
        self._dated_key = ("", b"")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Signer | None:
        """A signer for the credentials in the environment, or None when there are none."""
        env = os.environ if environ is None else environ
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            return None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(key, secret, region, env.get("AWS_SESSION_TOKEN") or None)

    def headers(self, method: str, url: str, body: bytes = b"", headers: Mapping[str, str] | None = None,
                now: float | None = None) -> dict[str, str]:
        """`headers` plus the signature's (X-Amz-Date, X-Amz-Security-Token, Authorization), signed
        as of `now` (seconds since the epoch; the clock by default); the request must then be sent
        with exactly this method, URL (query included), body and headers, and the Host header
        `host_header(url)` unless `headers` names another."""
        seconds = int(time.time() if now is None else now)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))
        out: dict[str, str] = {}
        dated = False
        for name, value in (headers or {}).items():
            lower = name.lower()
            # What botocore removes before it signs: a stale signature, date or token.
            if lower == "date":
                dated = True
            elif lower not in ("authorization", "x-amz-date") and not (lower == "x-amz-security-token"
                                                                      and self.token):
                out[name] = value
        if dated:  # botocore signs a Date header given, reformatted, instead of an X-Amz-Date
            from email.utils import formatdate  # rare: not loaded at every cold start
            out["Date"] = formatdate(seconds)
        else:
            out["X-Amz-Date"] = stamp
        if self.token:
            out["X-Amz-Security-Token"] = self.token
        path, query, host = _canonical_url(url)
        signed: dict[str, list[str]] = {}
        content_sha256 = None
        for name, value in out.items():
            lower = name.lower()
            if lower == "x-amz-content-sha256" and content_sha256 is None:
                content_sha256 = value  # botocore takes a given payload hash as it is (the first)
            if lower not in UNSIGNED_HEADERS:
                signed.setdefault(lower, []).append(" ".join(value.split()))
        if "host" not in signed:
            signed["host"] = [host]
        names = sorted(signed)
        signed_names = ";".join(names)
        canonical = "\n".join((
            method.upper(), path, query,
            "".join(f"{name}:{','.join(signed[name])}\n" for name in names),
            signed_names,
            content_sha256 if content_sha256 is not None
            else hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256,
        ))
        day = stamp[:8]
        scope = day + self._scope_tail
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        out["Authorization"] = (f"{ALGORITHM} Credential={self.access_key}/{scope}, "
                                f"SignedHeaders={signed_names}, Signature={signature}")
        return out

    def _signing_key(self, day: str) -> bytes:
        """SigV4's kSigning for `day`: four HMACs once a day rather than at every request."""
        dated, key = self._dated_key
        if dated != day:
            key = f"AWS4{self.secret_key}".encode()
            for part in (day, self.region, SERVICE, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._dated_key = (day, key)
        return key


def host_header(url: str) -> str:
    """The Host header that goes with `url` and its signature: the host in lower case, with the
    port unless it is the scheme's default."""
    return _canonical_url(url)[2]


@functools.lru_cache(maxsize=256)
def _canonical_url(url: str) -> tuple[str, str, str]:
    """(canonical path, canonical query, host) of a URL, as botocore's SigV4Auth makes them: the
    path without dot segments and empty segments, percent-encoded (again: '%' too) but for '/'
    and '~'; the query's pairs sorted as they are written, not re-encoded."""
    parts = urlsplit(url)
    query = ""
    if parts.query:
        pairs = sorted(pair.partition("=")[::2] for pair in parts.query.split("&"))
        query = "&".join(f"{key}={value}" for key, value in pairs)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return quote(_remove_dot_segments(parts.path), safe="/~"), query, host


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 5.2.4, and empty segments dropped as AWS services want (botocore's normalize_url_path).
    if not path:
        return "/"
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and kept else ""
    return first + "/".join(kept) + last

"""SigV4 verification for function URLs with `AuthType: AWS_IAM`, as Lambda does it: the
signature is recomputed with botocore's own signer over the signed headers the caller listed,
with the secret of the access key the caller named, and compared in constant time.

It runs on every invocation of such a URL (the supervisor's: every submission), so it skips what
only costs: botocore's canonical request, string to sign and payload hash are used as they are,
but fed a plain request object instead of an AWSRequest (whose email.message headers cost more
than the signature), the derived signing key is kept per secret, day and region (four HMACs,
as a client does), and X-Amz-Date is parsed without strptime."""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.auth import SigV4Auth
from botocore.credentials import Credentials

SERVICE = "lambda"
MAX_CLOCK_SKEW = datetime.timedelta(minutes=15)
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request,\s*SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]{64})"
)
_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z", re.ASCII)


class Refused(Exception):
    """The request is not signed by a known key, or not correctly; Lambda answers 403."""


@dataclass(frozen=True)
class Caller:
    access_key: str


class _Headers(dict[str, str]):
    """Header names lower-cased; looked up whatever the case, as botocore's HTTPHeaders are (it
    asks for `X-Amz-Content-SHA256`)."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def get_all(self, name: str) -> list[str]:
        """What botocore's canonical_headers asks of the headers to sign."""
        return [self[name]]


class _Request:
    """What botocore's SigV4Auth reads of a request."""

    __slots__ = ("body", "context", "headers", "method", "params", "url")

    def __init__(self, method: str, url: str, headers: _Headers, body: bytes, timestamp: str) -> None:
        self.method, self.url, self.headers, self.body = method, url, headers, body
        self.params: dict[str, str] = {}
        self.context: dict[str, Any] = {"timestamp": timestamp}


class _Recompute(SigV4Auth):
    """botocore's signer restricted to the headers the caller signed, with the derived key cached."""

    def __init__(self, credentials: Credentials, region: str, signed: list[str]) -> None:
        super().__init__(credentials, SERVICE, region)
        self._signed = signed

    def headers_to_sign(self, request: Any) -> _Headers:
        headers = _Headers()
        for name in self._signed:
            if name not in request.headers:
                raise Refused(f"signed header {name} is missing")
            headers[name] = request.headers[name]
        return headers

    def signature(self, string_to_sign: str, request: Any) -> str:
        key = _signing_key(self.credentials.secret_key, request.context["timestamp"][:8], self._region_name)
        return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=64)
def _signing_key(secret: str, day: str, region: str) -> bytes:
    """SigV4's kSigning, as botocore's SigV4Auth.signature derives it."""
    key = f"AWS4{secret}".encode()
    for part in (day, region, SERVICE, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _signed_at(amz_date: str) -> datetime.datetime:
    match = _AMZ_DATE.fullmatch(amz_date)
    if match is None:
        raise ValueError(amz_date)
    return datetime.datetime(*map(int, match.groups()), tzinfo=datetime.UTC)  # type: ignore[misc]


def verify(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], body: bytes,
           secrets: Mapping[str, str], region: str, now: datetime.datetime | None = None) -> Caller:
    """The caller, or Refused saying why. `secrets` maps access key ids to secret keys; the names
    in `headers` are lower-case (one value each)."""
    match = _AUTHORIZATION.fullmatch(headers.get("authorization", "").strip())
    if match is None:
        raise Refused("Missing or malformed Authorization header")
    if match["service"] != SERVICE or match["region"] != region:
        raise Refused(f"Credential should be scoped to {region}/{SERVICE}")
    secret = secrets.get(match["key"])
    if secret is None:
        raise Refused("The security token included in the request is invalid.")
    amz_date = headers.get("x-amz-date", "")
    try:
        signed_at = _signed_at(amz_date)
    except ValueError:
        raise Refused("X-Amz-Date is missing or malformed") from None
    now = now or datetime.datetime.now(datetime.UTC)
    if abs(now - signed_at) > MAX_CLOCK_SKEW or amz_date[:8] != match["date"]:
        raise Refused("Signature expired: the request time is too far from the server time")
    signed = match["signed"].split(";")
    url = f"http://{headers.get('host', '')}{raw_path}" + (f"?{raw_query}" if raw_query else "")
    request = _Request(method, url, _Headers((k.lower(), v) for k, v in headers.items()), body, amz_date)
    signer = _Recompute(Credentials(match["key"], secret, headers.get("x-amz-security-token")),
                        region, signed)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["sig"]):
        raise Refused("The request signature we calculated does not match the signature you provided. "
                      "Check your AWS Secret Access Key and signing method.")
    return Caller(match["key"])

"""SigV4 verification for function URLs with `AuthType: AWS_IAM`, as Lambda does it: the
signature is recomputed with botocore's own signer over the signed headers the caller listed,
with the secret of the access key the caller named, and compared in constant time."""

from __future__ import annotations

import datetime
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

SERVICE = "lambda"
MAX_CLOCK_SKEW = datetime.timedelta(minutes=15)
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request,\s*SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]{64})"
)


class Refused(Exception):
    """The request is not signed by a known key, or not correctly; Lambda answers 403."""


@dataclass(frozen=True)
class Caller:
    access_key: str


class _Recompute(SigV4Auth):
    """botocore's signer restricted to the headers the caller signed."""

    def __init__(self, credentials: Credentials, region: str, signed: list[str]) -> None:
        super().__init__(credentials, SERVICE, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name in self._signed:
            if name not in request.headers:
                raise Refused(f"signed header {name} is missing")
            headers[name] = request.headers[name]
        return headers


def verify(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], body: bytes,
           secrets: Mapping[str, str], region: str, now: datetime.datetime | None = None) -> Caller:
    """The caller, or Refused saying why. `secrets` maps access key ids to secret keys."""
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
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise Refused("X-Amz-Date is missing or malformed") from None
    now = now or datetime.datetime.now(datetime.UTC)
    if abs(now - signed_at) > MAX_CLOCK_SKEW or amz_date[:8] != match["date"]:
        raise Refused("Signature expired: the request time is too far from the server time")
    signed = match["signed"].split(";")
    url = f"http://{headers.get('host', '')}{raw_path}" + (f"?{raw_query}" if raw_query else "")
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    request.context["timestamp"] = amz_date
    signer = _Recompute(Credentials(match["key"], secret, headers.get("x-amz-security-token")),
                        region, signed)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["sig"]):
        raise Refused("The request signature we calculated does not match the signature you provided. "
                      "Check your AWS Secret Access Key and signing method.")
    return Caller(match["key"])

"""SigV4 signing of calls to function URLs with `AuthType: AWS_IAM` (the supervisor's, and the
producer's when its auth type is AWS_IAM), with botocore's signer, as any AWS SDK would sign them.

On Lambda the credentials are the execution role's (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN in the environment); locally they are the env file's key pair, which localfaas
also accepts."""

from __future__ import annotations

import os
from collections.abc import Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE = "lambda"  # function URLs are signed for the lambda service


class Signer:
    def __init__(self, access_key: str, secret_key: str, region: str, token: str | None = None) -> None:
        self.access_key = access_key
        self._auth = SigV4Auth(Credentials(access_key, secret_key, token), SERVICE, region)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Signer | None:
        """A signer for the credentials in the environment, or None when there are none."""
        env = os.environ if environ is None else environ
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            return None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(key, secret, region, env.get("AWS_SESSION_TOKEN") or None)

    def headers(self, method: str, url: str, body: bytes = b"",
                headers: Mapping[str, str] | None = None) -> dict[str, str]:
        """`headers` plus the signature's (Authorization, X-Amz-Date, X-Amz-Security-Token); the
        request must then be sent with exactly this method, URL (query included) and body."""
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        self._auth.add_auth(request)
        return dict(request.headers.items())

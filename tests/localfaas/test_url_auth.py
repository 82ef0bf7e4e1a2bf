"""AuthType AWS_IAM: localfaas checks SigV4 signatures as Lambda does, and refuses with 403."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from taskfaas.stack import RunningHost, http, start_host
from tests.localfaas.conftest import FIXTURES

KEY, SECRET = "AKIDLOCALTEST", "local-test-secret"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("iam")
    env_file = run_dir / "creds.env"
    env_file.write_text(f"AWS_ACCESS_KEY_ID={KEY}\nAWS_SECRET_ACCESS_KEY={SECRET}\n")
    running = start_host(FIXTURES / "iam_template.yaml", run_dir, extra_args=["--env-file", str(env_file)])
    yield running
    running.stop()


def signed(url: str, body: bytes, secret: str = SECRET, when: datetime.datetime | None = None,
           region: str = "us-east-1") -> dict[str, str]:
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    signer = SigV4Auth(Credentials(KEY, secret), "lambda", region)
    if when is None:
        signer.add_auth(request)
    else:  # botocore takes the time from the clock; sign as of `when` the way it would
        request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
        request.headers["X-Amz-Date"] = request.context["timestamp"]
        canonical = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, canonical), request)
        signer._inject_signature_to_request(request, signature)
    return dict(request.headers.items())


def post(host: RunningHost, body: bytes, headers: dict[str, str], path: str = "echo?x=1"):
    return http("POST", host.urls["Private"] + path, body, headers)


def test_signed_request_reaches_the_function(host: RunningHost) -> None:
    url, body = host.urls["Private"] + "echo?x=1", b'{"n": 1}'
    status, _, reply = post(host, body, signed(url, body))
    assert status == 200, reply
    event = json.loads(reply)
    iam = event["requestContext"]["authorizer"]["iam"]
    assert iam["accessKey"] == KEY and iam["userArn"].endswith(f"user/{KEY}")
    assert event["requestContext"]["accountId"] == "000000000000"
    assert event["queryStringParameters"] == {"x": "1"} and event["body"] == '{"n": 1}'


@pytest.mark.parametrize("case", ["unsigned", "wrong secret", "expired", "body changed", "other region"])
def test_refusals(host: RunningHost, case: str) -> None:
    url, body = host.urls["Private"] + "echo?x=1", b'{"n": 1}'
    headers = {
        "unsigned": {"Content-Type": "application/json"},
        "wrong secret": signed(url, body, secret="not-the-secret"),
        "expired": signed(url, body, when=datetime.datetime.now(datetime.UTC)
                          - datetime.timedelta(minutes=20)),
        "body changed": signed(url, body),
        "other region": signed(url, body, region="eu-west-1"),
    }[case]
    sent = b'{"n": 2}' if case == "body changed" else body
    invocations = host.status()["functions"]["Private"]["invocations"]
    status, reply_headers, reply = post(host, sent, headers)
    assert status == 403, reply
    assert reply_headers["x-amzn-ErrorType"] == "AccessDeniedException"
    assert json.loads(reply)["Message"].startswith("Forbidden.")
    assert host.status()["functions"]["Private"]["invocations"] == invocations  # it never ran


def test_signature_made_a_moment_ago_is_accepted(host: RunningHost) -> None:
    url, body = host.urls["Private"] + "echo", b"{}"
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=2)
    assert post(host, body, signed(url, body, when=moment), path="echo")[0] == 200


def test_no_credentials_configured_refuses_everything(tmp_path: Path) -> None:
    bare = start_host(FIXTURES / "iam_template.yaml", tmp_path)
    try:
        url, body = bare.urls["Private"] + "echo", b"{}"
        assert http("POST", url, body, signed(url, body))[0] == 403
    finally:
        bare.stop()

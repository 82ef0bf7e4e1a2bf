"""The HTTP client of a running stack: where its function URLs are, and the calls the CLI makes.

The supervisor's URL is AuthType AWS_IAM, so its calls are SigV4-signed with taskcore's signer and
the stack's credentials (the environment's, else infra/local.env's AWS_* values). The producer's
auth type is the template's ProducerAuthType: when it is not known (URLs from the state file or
from flags), a call is sent unsigned and, if refused with 403, once more signed."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskcore.signing import Signer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_ENV = PROJECT_ROOT / "infra" / "local.env"
# The supervisor's long-poll maximum per request (MAX_WAIT_SECONDS): longer waits take several.
MAX_WAIT_PER_REQUEST = 20.0
MAX_IDS_PER_REQUEST = 100  # GET /results?ids=
FINAL = ("succeeded", "failed")


class StackError(Exception):
    """No stack found, or it cannot be reached."""


class ApiError(Exception):
    """The stack answered with an error (4xx/5xx); `str()` is a one-line account of it."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            details = error.get("details") or {}
            where = f" (task {details['index']})" if isinstance(details, dict) and "index" in details else ""
            text = f"{error.get('code')}: {error.get('message')}{where}"
        elif isinstance(body, dict) and "Message" in body:  # the function URL's own refusal (403)
            text = str(body["Message"])
        else:
            text = str(body)[:200]
        super().__init__(f"{status} {text}")


@dataclass(frozen=True)
class Endpoints:
    producer: str | None
    supervisor: str | None
    producer_auth: str | None = None  # "AWS_IAM" | "NONE", None when unknown


def credentials(environ: Mapping[str, str] | None = None, env_file: Path = LOCAL_ENV) -> dict[str, str]:
    """The AWS_* settings to sign with: the environment's when it has a key pair, else the env file's."""
    env = os.environ if environ is None else environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return {k: v for k, v in env.items() if k.startswith("AWS_")}
    if not env_file.exists():
        return {}
    pairs = (line.split("=", 1) for line in env_file.read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs if key.strip().startswith("AWS_")}


def from_state_file(run_dir: Path) -> Endpoints:
    """The URLs `localfaas start` wrote to <run dir>/state.json."""
    path = run_dir / "state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise StackError(f"no running stack: {path} not found (start one with `make run`, or give "
                         "--endpoint-url or --producer-url/--supervisor-url)") from None
    except ValueError as error:
        raise StackError(f"{path} is not a localfaas state file: {error}") from None
    urls = state.get("urls", {})
    return Endpoints(urls.get("Producer"), urls.get("Supervisor"))


def from_lambda_api(endpoint_url: str, names: Sequence[str], creds: Mapping[str, str]) -> Endpoints:
    """The URLs from the Lambda API's GetFunctionUrlConfig at `endpoint_url` (localfaas's control
    port, or AWS's regional endpoint), with the producer's auth type."""
    import botocore.exceptions
    import botocore.session

    configs = []
    try:
        # Without a key pair here, botocore's own chain (profiles, SSO, instance roles) applies.
        client = botocore.session.get_session().create_client(
            "lambda", endpoint_url=endpoint_url,
            region_name=creds.get("AWS_REGION") or creds.get("AWS_DEFAULT_REGION") or "us-east-1",
            aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=creds.get("AWS_SESSION_TOKEN"))
        for name in names:
            try:
                configs.append(client.get_function_url_config(FunctionName=name))
            except botocore.exceptions.ClientError as error:
                raise StackError(f"the Lambda API at {endpoint_url} has no URL for {name}: {error}") from None
    except botocore.exceptions.BotoCoreError as error:
        raise StackError(f"cannot reach the Lambda API at {endpoint_url}: {error}") from None
    producer, supervisor = configs
    return Endpoints(producer["FunctionUrl"], supervisor["FunctionUrl"], producer["AuthType"])


class Client:
    def __init__(self, endpoints: Endpoints, signer: Signer | None, timeout: float = 30) -> None:
        self.endpoints = endpoints
        self.signer = signer
        self.timeout = timeout

    # Producer ---------------------------------------------------------------------------------

    def submit(self, body: Any) -> Any:
        """POST /produce: one task (a dict) or {"tasks": [...]}; the producer's reply."""
        url = self._url("producer", self.endpoints.producer, "produce")
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        signed = self.endpoints.producer_auth == "AWS_IAM"
        try:
            return self._call("POST", url, data, headers, sign=signed)
        except ApiError as error:
            # A producer URL of AuthType AWS_IAM refuses unsigned calls before its function runs.
            if error.status != 403 or signed or self.endpoints.producer_auth or self.signer is None:
                raise
            return self._call("POST", url, data, headers, sign=True)

    # Supervisor -------------------------------------------------------------------------------

    def results(self, task_ids: Sequence[str], wait: float = 0) -> tuple[list[dict[str, Any]], list[str]]:
        """The records of `task_ids` (in order) and the ids not found; with `wait`, once all known
        ones are final or `wait` seconds are over (in several long-polls when needed)."""
        records: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        pending = list(dict.fromkeys(task_ids))
        deadline = time.monotonic() + wait
        first = True
        while pending and (first or time.monotonic() < deadline):
            first = False
            for start in range(0, len(pending), MAX_IDS_PER_REQUEST):
                chunk = pending[start:start + MAX_IDS_PER_REQUEST]
                query = {"ids": ",".join(chunk)}
                left = min(MAX_WAIT_PER_REQUEST, deadline - time.monotonic())
                if left > 0:
                    query["wait"] = f"{left:.1f}"
                reply = self.supervisor("results", query, extra_timeout=max(left, 0))
                records.update((r["task_id"], r) for r in reply["results"])
                missing += reply["not_found"]
            pending = [t for t in pending if t in records and records[t]["status"] not in FINAL]
        return [records[t] for t in dict.fromkeys(task_ids) if t in records], missing

    def supervisor(self, path: str, query: Mapping[str, Any] | None = None, extra_timeout: float = 0) -> Any:
        """A signed GET of the supervisor's `path`."""
        url = self._url("supervisor", self.endpoints.supervisor, path)
        if query:
            url += "?" + urllib.parse.urlencode(query)
        if self.signer is None:
            raise StackError("no credentials to sign the supervisor's calls: set AWS_ACCESS_KEY_ID and "
                             f"AWS_SECRET_ACCESS_KEY (or keep them in {LOCAL_ENV})")
        return self._call("GET", url, b"", {}, sign=True, extra_timeout=extra_timeout)

    # HTTP -------------------------------------------------------------------------------------

    @staticmethod
    def _url(role: str, base: str | None, path: str) -> str:
        if not base:
            raise StackError(f"no {role} URL: give --{role}-url, --endpoint-url or --run-dir")
        return base.rstrip("/") + "/" + path

    def _call(self, method: str, url: str, body: bytes, headers: dict[str, str], sign: bool,
              extra_timeout: float = 0) -> Any:
        if sign and self.signer is not None:
            headers = self.signer.headers(method, url, body, headers)
        request = urllib.request.Request(url, data=body or None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout + extra_timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                reply = json.loads(raw)
            except ValueError:
                reply = raw.decode(errors="replace")
            raise ApiError(error.code, reply) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise StackError(f"cannot reach {url.split('?')[0]} ({reason}): is the stack running?") from None

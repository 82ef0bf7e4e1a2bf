"""The Lambda API on the control port, driven by boto3 the three ways a LocalStack user gets a
client (docs/lambda_behaviours.md §2.5 and §3): localstack-client's Session, pytest-localstack's
RunningSession, and plain boto3 with endpoint_url."""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import pika
import pytest
from botocore.config import Config
from localstack_client.session import Session as LocalstackClientSession
from pytest_localstack.session import RunningSession

from taskfaas.stack import RABBITMQ_URL, eventually, http
from tests.localfaas.conftest import FIXTURES, RunningHost, client_args, start_host

FUNCTIONS = {"Echo", "Behave", "Capped", "Web", "Big", "Broken"}
NO_RETRY = Config(retries={"max_attempts": 1, "mode": "standard"})

# Variables that would send these clients somewhere other than the host under test.
_REDIRECTS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA", "LOCALSTACK_HOST", "USE_SSL", "AWS_PROFILE",
              "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, runtime_client: str) -> Iterator[RunningHost]:
    with pytest.MonkeyPatch.context() as patch:
        for name in _REDIRECTS:
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        running = start_host(FIXTURES / "template.yaml", tmp_path_factory.mktemp("api"),
                             extra_args=client_args(runtime_client))
        yield running
        running.stop()


ClientFactory = Callable[[Config | None], Any]


def localstack_client_factory(host: RunningHost) -> ClientFactory:
    # localstack-client builds every endpoint from `localstack_host` ("host:port"); without it
    # it reads $LOCALSTACK_HOST (default localhost:4566), and $AWS_ENDPOINT_URL beats both.
    session = LocalstackClientSession(localstack_host=urlsplit(host.endpoint).netloc)
    return lambda config=None: session.client("lambda", config=config)


def pytest_localstack_factory(host: RunningHost) -> ClientFactory:
    parts = urlsplit(host.endpoint)
    # RunningSession's default service_ports map every service to 4566; a dict `services`
    # gives the port per service, so no attribute needs overriding after construction.
    session = RunningSession(parts.hostname, services={"lambda": parts.port}, region_name="us-east-1")
    session.start(timeout=10)  # its own readiness check: ListFunctions must answer `Functions`
    assert session.endpoint_url("lambda") == host.endpoint

    def make(config: Config | None = None) -> Any:
        if config is None:
            return session.boto3.client("lambda")
        return session.boto3.default_session.client("lambda", config=config)

    return make


def plain_boto3_factory(host: RunningHost) -> ClientFactory:
    return lambda config=None: boto3.client(
        "lambda", endpoint_url=host.endpoint, region_name="us-east-1", aws_access_key_id="x",
        aws_secret_access_key="y", config=config)


@pytest.fixture(scope="module", params=[localstack_client_factory, pytest_localstack_factory,
                                        plain_boto3_factory],
                ids=["localstack-client", "pytest-localstack", "boto3"])
def make_client(request: pytest.FixtureRequest, host: RunningHost) -> ClientFactory:
    make = request.param(host)
    assert make().meta.endpoint_url == host.endpoint
    return make


@pytest.fixture(scope="module")
def client(make_client: ClientFactory) -> Any:
    return make_client(None)


def payload(response: dict[str, Any]) -> Any:
    return json.loads(response["Payload"].read())


# -- Invoke -------------------------------------------------------------------------------------


def test_request_response(client: Any) -> None:
    response = client.invoke(FunctionName="Echo", Payload=json.dumps({"hello": "there"}).encode())
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert response["ExecutedVersion"] == "$LATEST"
    result = payload(response)
    assert result["event"] == {"hello": "there"}
    assert result["context"]["aws_request_id"] == response["ResponseMetadata"]["RequestId"]
    assert result["context"]["function_name"] == "Echo"


def test_invoke_by_arn(client: Any) -> None:
    arn = "arn:aws:lambda:us-east-1:000000000000:function:Echo"
    response = client.invoke(FunctionName=arn, Payload=b'{"by": "arn"}')
    assert payload(response)["event"] == {"by": "arn"}


def test_function_error(client: Any) -> None:
    response = client.invoke(FunctionName="Behave", Payload=json.dumps({"raise": "k"}).encode())
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    error = payload(response)
    assert error["errorType"] == "KeyError"
    assert error["errorMessage"] == "'k'"
    assert error["requestId"] == response["ResponseMetadata"]["RequestId"]
    assert isinstance(error["stackTrace"], list)


def test_event_invoke_runs_later(client: Any, host: RunningHost) -> None:
    marker = uuid.uuid4().hex
    response = client.invoke(FunctionName="Behave", InvocationType="Event",
                             Payload=json.dumps({"marker": marker}).encode())
    assert response["StatusCode"] == 202
    assert response["Payload"].read() == b""
    request_id = response["ResponseMetadata"]["RequestId"]
    log = host.wait_for_log("Behave", f"END RequestId: {request_id}", timeout=10)
    assert f"behave got {{'marker': '{marker}'}}" in log
    assert f"START RequestId: {request_id}" in log


def test_dry_run(client: Any, host: RunningHost) -> None:
    before = host.status()["functions"]["Echo"]["invocations"]
    response = client.invoke(FunctionName="Echo", InvocationType="DryRun")
    assert response["StatusCode"] == 204
    assert response["Payload"].read() == b""
    assert host.status()["functions"]["Echo"]["invocations"] == before


def test_log_tail(client: Any) -> None:
    marker = uuid.uuid4().hex
    response = client.invoke(FunctionName="Behave", LogType="Tail",
                             Payload=json.dumps({"marker": marker}).encode())
    request_id = response["ResponseMetadata"]["RequestId"]
    log = base64.b64decode(response["LogResult"]).decode()
    assert f"START RequestId: {request_id} Version: $LATEST" in log
    assert f"behave got {{'marker': '{marker}'}}" in log
    assert f"END RequestId: {request_id}" in log
    assert f"REPORT RequestId: {request_id}\tDuration: " in log
    assert log.index("START") < log.index("behave got") < log.index("END") < log.index("REPORT")


def test_no_log_result_without_tail(client: Any) -> None:
    assert "LogResult" not in client.invoke(FunctionName="Echo", Payload=b"{}")


def test_client_context(client: Any) -> None:
    context = {"custom": {"k": "v", "n": "1"}, "env": {"platform": "test"}, "client": {}}
    response = client.invoke(FunctionName="Echo", Payload=b"{}",
                             ClientContext=base64.b64encode(json.dumps(context).encode()).decode())
    assert "FunctionError" not in response
    assert payload(response)["context"]["client_context"] == {"k": "v", "n": "1"}


@pytest.mark.parametrize("client_context", ["string", "not base64!!"])
def test_client_context_that_is_not_base64(host: RunningHost, client_context: str) -> None:
    """Lambda refuses it before running anything: 400 InvalidRequestContentException, "Client
    context must be a valid Base64-encoded JSON object." (boto/boto3#2153 shows `ClientContext=
    'string'` getting exactly that). A server fault here is the host's, so one client suffices."""
    client = plain_boto3_factory(host)(NO_RETRY)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.invoke(FunctionName="Echo", Payload=b"{}", ClientContext=client_context)
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400, error
    assert error["Error"]["Code"] == "InvalidRequestContentException"
    assert "Client context must be a valid Base64-encoded JSON object" in error["Error"]["Message"]


def test_payload_that_is_not_json(client: Any) -> None:
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        client.invoke(FunctionName="Echo", Payload=b"not json")


def test_unknown_function(client: Any) -> None:
    for call in (lambda: client.invoke(FunctionName="Nope", Payload=b"{}"),
                 lambda: client.invoke(FunctionName="Nope", InvocationType="DryRun"),
                 lambda: client.get_function(FunctionName="Nope")):
        with pytest.raises(client.exceptions.ResourceNotFoundException) as caught:
            call()
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert "arn:aws:lambda:us-east-1:000000000000:function:Nope" in str(caught.value)


def test_throttling(make_client: ClientFactory, host: RunningHost) -> None:
    client = make_client(NO_RETRY)
    first: dict[str, Any] = {}

    def sleeper() -> None:
        response = client.invoke(FunctionName="Capped", Payload=json.dumps({"sleep": 3}).encode())
        first["result"] = payload(response)

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while host.status()["functions"]["Capped"]["busy"] < 1:  # the sleeper holds the one slot
            assert time.monotonic() < deadline, "the first invocation never started"
            time.sleep(0.05)
        with pytest.raises(client.exceptions.TooManyRequestsException) as caught:
            client.invoke(FunctionName="Capped", Payload=b"{}")
        error = caught.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert error["Error"]["Message"] == "Rate Exceeded."
        assert error["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
        # An Event invocation is not throttled: it waits for the slot and runs afterwards.
        marker = uuid.uuid4().hex
        queued = client.invoke(FunctionName="Capped", InvocationType="Event",
                               Payload=json.dumps({"marker": marker}).encode())
        assert queued["StatusCode"] == 202
    finally:
        thread.join(timeout=15)
    assert first["result"]["ok"] is True
    host.wait_for_log("Capped", f"END RequestId: {queued['ResponseMetadata']['RequestId']}")
    host.wait_for_log("Capped", f"behave got {{'marker': '{marker}'}}")


# -- ListFunctions, GetFunction, GetFunctionUrlConfig --------------------------------------------


def test_list_functions(client: Any) -> None:
    functions = client.list_functions()["Functions"]
    assert {f["FunctionName"] for f in functions} == FUNCTIONS
    assert len(functions) == len(FUNCTIONS)


def test_list_functions_paginator(client: Any) -> None:
    paginator = client.get_paginator("list_functions")
    limited = paginator.paginate(PaginationConfig={"MaxItems": 2}).build_full_result()
    assert len(limited["Functions"]) == 2
    assert limited.get("NextToken")
    pages = list(paginator.paginate(PaginationConfig={"PageSize": 2}))
    assert [len(page["Functions"]) for page in pages] == [2, 2, 2]
    names = [f["FunctionName"] for page in pages for f in page["Functions"]]
    assert sorted(names) == sorted(FUNCTIONS)
    resumed = paginator.paginate(PaginationConfig={"MaxItems": 10,
                                                   "StartingToken": limited["NextToken"]})
    rest = [f["FunctionName"] for f in resumed.build_full_result()["Functions"]]
    assert sorted(rest + [f["FunctionName"] for f in limited["Functions"]]) == sorted(FUNCTIONS)


def test_get_function(client: Any) -> None:
    echo = client.get_function(FunctionName="Echo")
    configuration = echo["Configuration"]
    assert configuration["FunctionName"] == "Echo"
    assert configuration["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:Echo"
    assert configuration["Handler"] == "app.echo"
    assert configuration["Runtime"] == "python3.12"
    assert configuration["Timeout"] == 5
    assert configuration["MemorySize"] == 256
    assert configuration["State"] == "Active"
    assert "Concurrency" not in echo
    behave = client.get_function(FunctionName="Behave")["Configuration"]
    assert (behave["Handler"], behave["Timeout"]) == ("app.behave", 2)
    capped = client.get_function(FunctionName="Capped")
    assert capped["Concurrency"] == {"ReservedConcurrentExecutions": 1}


def test_waiters_over_get_function(client: Any) -> None:
    config = {"Delay": 1, "MaxAttempts": 2}
    client.get_waiter("function_exists").wait(FunctionName="Echo", WaiterConfig=config)
    client.get_waiter("function_active_v2").wait(FunctionName="Echo", WaiterConfig=config)


def test_get_function_url_config(client: Any, host: RunningHost) -> None:
    url = client.get_function_url_config(FunctionName="Web")
    assert url["FunctionUrl"] == host.urls["Web"]
    assert url["FunctionUrl"].endswith("/")
    assert url["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:Web"
    assert url["AuthType"] == "NONE"
    assert url["Cors"]["MaxAge"] == 300
    assert url["Cors"]["AllowOrigins"] == ["https://allowed.example"]
    assert url["Cors"]["ExposeHeaders"] == ["x-custom"]
    assert url["CreationTime"] and url["LastModifiedTime"]


def test_get_function_url_config_without_url(client: Any) -> None:
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_function_url_config(FunctionName="Echo")


# -- ListFunctionUrlConfigs, ListEventSourceMappings, GetEventSourceMapping -----------------------


def test_list_function_url_configs(client: Any) -> None:
    single = client.get_function_url_config(FunctionName="Web")
    del single["ResponseMetadata"]
    for name in ("Web", "arn:aws:lambda:us-east-1:000000000000:function:Web"):
        listed = client.list_function_url_configs(FunctionName=name)
        assert listed["FunctionUrlConfigs"] == [single]
        assert "NextMarker" not in listed
    assert client.list_function_url_configs(FunctionName="Echo")["FunctionUrlConfigs"] == []
    pages = client.get_paginator("list_function_url_configs").paginate(FunctionName="Web")
    assert pages.build_full_result()["FunctionUrlConfigs"] == [single]
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.list_function_url_configs(FunctionName="Nope")


def test_no_event_source_mappings(client: Any) -> None:
    assert client.list_event_source_mappings()["EventSourceMappings"] == []
    assert client.list_event_source_mappings(FunctionName="Echo")["EventSourceMappings"] == []


def test_list_paging_refuses_bad_markers(host: RunningHost) -> None:
    for query in ("Marker=abc", "Marker=-1", "Marker=99", "MaxItems=0", "MaxItems=x"):
        for path in ("/2015-03-31/functions/", "/2015-03-31/event-source-mappings/",
                     "/2021-10-31/functions/Web/urls"):
            status, headers, body = http("GET", f"{host.endpoint}{path}?{query}")
            assert status == 400, (path, query, body)
            assert headers["x-amzn-ErrorType"] == "InvalidParameterValueException"
            assert json.loads(body)["Type"] == "User"


@pytest.fixture
def mq_host(tmp_path: Path) -> Iterator[tuple[RunningHost, str]]:
    """The MQ fixture with a second, disabled event on a queue of its own."""
    queue, paused = f"lf-esm-{uuid.uuid4().hex[:10]}", f"lf-esm-paused-{uuid.uuid4().hex[:10]}"
    code = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, code)
    template = (code / "mq_template.yaml").read_text() + (
        "        Paused:\n          Type: MQ\n          Properties:\n"
        "            Broker: arn:aws:mq:us-east-1:000000000000:broker:other:b-1\n"
        f"            Queues: [{paused}]\n            BatchSize: 5\n            Enabled: false\n")
    (code / "esm_template.yaml").write_text(template)
    with pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL)) as connection:
        connection.channel().queue_declare(queue)
    try:
        running = start_host(code / "esm_template.yaml", tmp_path / "run",
                             {"Queue": queue, "RecordFile": str(tmp_path / "records.jsonl")})
        try:
            yield running, queue
        finally:
            running.stop()
    finally:
        with pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL)) as connection:
            connection.channel().queue_delete(queue)


def test_event_source_mappings(mq_host: tuple[RunningHost, str], tmp_path: Path) -> None:
    host, queue = mq_host
    client = plain_boto3_factory(host)(None)
    arn = "arn:aws:lambda:us-east-1:000000000000:function:Consumer"
    listed = client.list_event_source_mappings()["EventSourceMappings"]
    assert [(m["Queues"], m["State"]) for m in listed] == [([queue], "Enabled"),
                                                            ([listed[1]["Queues"][0]], "Disabled")]
    jobs, paused = listed
    assert jobs["FunctionArn"] == paused["FunctionArn"] == arn
    assert jobs["EventSourceArn"] == "arn:aws:mq:us-east-1:000000000000:broker:local:" \
                                     "b-00000000-0000-0000-0000-000000000000"
    assert (jobs["BatchSize"], jobs["MaximumBatchingWindowInSeconds"], paused["BatchSize"]) == (10, 0, 5)
    assert jobs["SourceAccessConfigurations"] == [{"Type": "VIRTUAL_HOST", "URI": "/"}]
    assert jobs["EventSourceMappingArn"] == f"arn:aws:lambda:us-east-1:000000000000:event-source-mapping:" \
                                            f"{jobs['UUID']}"
    assert str(uuid.UUID(jobs["UUID"])) == jobs["UUID"] != paused["UUID"]
    assert jobs["LastModified"].year >= 2024
    assert jobs["LastProcessingResult"] == paused["LastProcessingResult"] == "No records processed"

    # The same mappings on every call, filtered by function (name or ARN) and by event source
    strip = [{k: v for k, v in m.items() if k != "LastProcessingResult"} for m in listed]
    for name in ("Consumer", arn):
        found = client.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]
        assert [{k: v for k, v in m.items() if k != "LastProcessingResult"} for m in found] == strip
    assert client.list_event_source_mappings(FunctionName="Nope")["EventSourceMappings"] == []
    only = client.list_event_source_mappings(EventSourceArn=paused["EventSourceArn"])
    assert [m["UUID"] for m in only["EventSourceMappings"]] == [paused["UUID"]]

    # Pages of one, and the paginator over them
    first = client.list_event_source_mappings(MaxItems=1)
    assert [m["UUID"] for m in first["EventSourceMappings"]] == [jobs["UUID"]]
    second = client.list_event_source_mappings(MaxItems=1, Marker=first["NextMarker"])
    assert [m["UUID"] for m in second["EventSourceMappings"]] == [paused["UUID"]]
    assert "NextMarker" not in second
    pages = list(client.get_paginator("list_event_source_mappings").paginate(
        PaginationConfig={"PageSize": 1}))
    paged = [m["UUID"] for page in pages for m in page["EventSourceMappings"]]
    assert paged == [jobs["UUID"], paused["UUID"]]

    got = client.get_event_source_mapping(UUID=paused["UUID"])
    del got["ResponseMetadata"]
    assert got == paused
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_event_source_mapping(UUID=str(uuid.uuid4()))

    # Once a batch went through, the mapping reports it as Lambda does
    eventually(lambda: host.status()["mappings"][0]["connected"], 10, "the mapping to connect")
    with pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL)) as connection:
        connection.channel().basic_publish("", queue, b'{"n": 1}')
    eventually(lambda: client.get_event_source_mapping(UUID=jobs["UUID"])["LastProcessingResult"] == "OK",
               10, "LastProcessingResult OK after a batch")
    [record] = (tmp_path / "records.jsonl").read_text().splitlines()
    assert list(json.loads(record)["event"]["rmqMessagesByQueue"]) == [f"{queue}::/"]

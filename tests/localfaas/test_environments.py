"""Execution environments through the real host: context, variables, layers, cold and warm
starts, timeouts, crashes, init errors, marshalling, logging, signals, the concurrency cap,
deploys and shutdown. Each runs against both runtime interface clients (conftest.RUNTIME_CLIENTS)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from taskfaas.stack import RunningHost, http, start_host
from tests.localfaas.conftest import CLIENT_MODULES, FIXTURES, client_args


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, runtime_client: str):
    running = start_host(FIXTURES / "template.yaml", tmp_path_factory.mktemp("envs"),
                         overrides={"Greeting": "hi"}, extra_args=client_args(runtime_client))
    yield running
    running.stop()


def invoke_json(host: RunningHost, name: str, payload: object = None) -> tuple[dict, dict]:
    status, headers, body = host.invoke(name, payload)
    assert status == 200, body
    return json.loads(body), headers


def test_the_environment_runs_the_chosen_client(host: RunningHost, runtime_client: str) -> None:
    """Else the tests below would prove one client twice. The setting that chose it stays out of
    the function's process: Lambda sets no such variable."""
    pid = invoke_json(host, "Echo")[0]["pid"]
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert command[1:4] == [b"-m", CLIENT_MODULES[runtime_client].encode(), b"app.echo"]
    assert b"LOCALFAAS_RUNTIME_CLIENT" not in Path(f"/proc/{pid}/environ").read_bytes()


def test_context_and_remaining_time(host: RunningHost) -> None:
    result, headers = invoke_json(host, "Echo", {"hello": "there"})
    context = result["context"]
    assert result["event"] == {"hello": "there"}
    assert context["aws_request_id"] == headers["x-amzn-RequestId"]
    assert context["function_name"] == "Echo"
    assert context["function_version"] == "$LATEST"
    assert context["memory_limit_in_mb"] == "256"
    assert context["invoked_function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:Echo"
    assert context["log_group_name"] == "/aws/lambda/Echo"
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", context["log_stream_name"])
    assert 4000 < context["remaining_ms"] <= 5000  # Timeout 5 from Globals


def test_environment_variables(host: RunningHost) -> None:
    env = invoke_json(host, "Echo")[0]["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "Echo"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.12"
    assert env["_HANDLER"] == "app.echo"
    assert Path(env["LAMBDA_TASK_ROOT"]) == FIXTURES / "basic"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", env["AWS_LAMBDA_RUNTIME_API"])
    assert env["_X_AMZN_TRACE_ID"].startswith("Root=1-")
    # Globals merged with the function's own; parameters and intrinsics resolved.
    assert env["FIXTURE_GLOBAL"] == "global-value"
    assert env["FIXTURE_OVERRIDDEN"] == "local"
    assert env["FIXTURE_GREETING"] == "hi"
    assert env["FIXTURE_SUB"] == "us-east-1-hi"
    assert env["FIXTURE_WEB_URL"] == host.urls["Web"]


def test_layer_is_on_the_path(host: RunningHost) -> None:
    result = invoke_json(host, "Echo")[0]
    assert result["greeting"] == "hello from the layer"
    assert str(FIXTURES / "layer" / "python") in result["sys_path"]


def test_cold_start_then_warm_reuse(host: RunningHost) -> None:
    first = invoke_json(host, "Echo")[0]
    second = invoke_json(host, "Echo")[0]
    assert second["pid"] == first["pid"] == second["init_pid"]  # init ran once, in that process
    assert second["invocations_in_this_environment"] == first["invocations_in_this_environment"] + 1
    log = host.wait_for_log("Echo", second["context"]["aws_request_id"])
    reports = [line for line in log.splitlines() if line.startswith("REPORT")]
    assert "Init Duration:" in reports[0]
    assert all("Init Duration" not in line for line in reports[1:])
    assert re.fullmatch(r"REPORT RequestId: \S+\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms\t"
                        r"Memory Size: 256 MB\tMax Memory Used: \d+ MB\t(Init Duration: \d+\.\d\d ms\t)?",
                        reports[0])


def test_timeout_kills_and_replaces_the_environment(host: RunningHost) -> None:
    before = invoke_json(host, "Behave")[0]["pid"]
    started = time.monotonic()
    status, headers, body = host.invoke("Behave", {"sleep": 10})
    assert time.monotonic() - started < 5
    assert status == 200 and headers["X-Amz-Function-Error"] == "Unhandled"
    error = json.loads(body)
    assert error["errorType"] == "Sandbox.Timedout"
    assert error["errorMessage"] == (f"RequestId: {headers['x-amzn-RequestId']} Error: "
                                     "Task timed out after 2.00 seconds")
    host.wait_for_log("Behave", "Task timed out after 2.00 seconds")
    after = invoke_json(host, "Behave")[0]["pid"]
    assert after != before
    with pytest.raises(ProcessLookupError):
        os.kill(before, 0)


def test_crash_fails_only_that_invocation(host: RunningHost) -> None:
    _status, headers, body = host.invoke("Behave", {"exit": 3})
    error = json.loads(body)
    assert headers["X-Amz-Function-Error"] == "Unhandled"
    assert error == {"errorType": "Runtime.ExitError",
                     "errorMessage": f"RequestId: {headers['x-amzn-RequestId']} Error: "
                                     "Runtime exited with error: exit status 3"}
    assert invoke_json(host, "Behave")[0]["ok"] is True


def test_handler_exception_is_a_function_error(host: RunningHost) -> None:
    _status, headers, body = host.invoke("Behave", {"raise": "missing"})
    error = json.loads(body)
    assert headers["X-Amz-Function-Error"] == "Unhandled"
    assert error["errorType"] == "KeyError" and error["errorMessage"] == "'missing'"
    assert error["requestId"] == headers["x-amzn-RequestId"]
    assert any("raise KeyError" in frame for frame in error["stackTrace"])
    # awslambdaric's log record of it: one record, its lines ended by \r (the host splits them).
    log = host.wait_for_log("Behave", "[ERROR] KeyError: 'missing'\n")
    record = log[log.index("[ERROR] KeyError: 'missing'"):].splitlines()
    assert record[1] == "Traceback (most recent call last):"
    assert record[2].startswith('\u00a0\u00a0File "') and record[2].endswith("in behave")


def test_results_are_marshalled_as_awslambdaric_does(host: RunningHost) -> None:
    """Decimals as numbers, text unescaped (python3.12), bytes as they are; a value JSON cannot
    hold is the runtime's Runtime.MarshalError, and the environment stays warm."""
    status, headers, body = host.invoke("Behave", {"marshal": "decimal"})
    assert status == 200 and "X-Amz-Function-Error" not in headers
    assert body == '{"price": 1.50, "text": "caf\u00e9"}'.encode()
    status, headers, body = host.invoke("Behave", {"marshal": "bytes"})
    assert status == 200 and body == b"\x00raw bytes\xff" and "X-Amz-Function-Error" not in headers
    pid = invoke_json(host, "Behave")[0]["pid"]
    _status, headers, body = host.invoke("Behave", {"marshal": "set"})
    assert headers["X-Amz-Function-Error"] == "Unhandled"
    error = json.loads(body)
    assert error == {"errorType": "Runtime.MarshalError", "requestId": headers["x-amzn-RequestId"],
                     "errorMessage": "Unable to marshal response: "
                                     "Object of type set is not JSON serializable",
                     "stackTrace": []}
    assert invoke_json(host, "Behave")[0]["pid"] == pid


def test_logging_records_carry_the_request_id(host: RunningHost) -> None:
    marker = f"logged {time.time_ns()}"
    _result, headers = invoke_json(host, "Behave", {"log": marker})
    log = host.wait_for_log("Behave", marker)
    [line] = [line for line in log.splitlines() if line.endswith(marker)]
    assert re.fullmatch(rf"\[WARNING\]\t\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z\t"
                        rf"{headers['x-amzn-RequestId']}\t{marker}", line), line


def test_a_signal_handler_runs_while_the_environment_waits(host: RunningHost) -> None:
    """A function's SIGTERM handler runs between invocations, while the runtime waits for the
    next one (awslambdaric polls from a thread for this; the lean client's recv lets it through),
    and the environment serves the next invocation afterwards."""
    pid = invoke_json(host, "Behave", {"trap": "SIGTERM"})[0]["pid"]
    time.sleep(0.2)  # the answer is out: the runtime is back in its wait for the next invocation
    os.kill(pid, signal.SIGTERM)
    host.wait_for_log("Behave", f"caught signal {int(signal.SIGTERM)}")
    assert invoke_json(host, "Behave")[0]["pid"] == pid


def test_init_error_is_reported_and_not_cached(host: RunningHost) -> None:
    for _ in range(2):
        _status, headers, body = host.invoke("Broken")
        error = json.loads(body)
        assert headers["X-Amz-Function-Error"] == "Unhandled"
        assert error["errorType"] == "Runtime.ImportModuleError"
        assert "module_that_does_not_exist" in error["errorMessage"]
    host.wait_for_log("Broken", "Phase: init\tStatus: error\tError Type: Runtime.ImportModuleError")


INIT_FAILURES = """
  NoHandler:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: basic/, Handler: app.missing}
  BadSyntax:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: broken/, Handler: syntax.handler}
  RaisesAtImport:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: broken/, Handler: raising.handler}
  NoDot:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: basic/, Handler: app}

Outputs:"""


def test_init_errors_of_each_kind(localfaas, tmp_path: Path, runtime_client: str) -> None:
    """awslambdaric's init error documents (docs/lambda_behaviours.md §1.3), posted to /init/error
    and returned to the caller; the logs say which."""
    code = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, code)
    (code / "broken" / "syntax.py").write_text("def handler(event, context:\n    return 1\n")
    (code / "broken" / "raising.py").write_text("raise RuntimeError('no config')\n")
    template = code / "template.yaml"
    template.write_text(template.read_text().replace("\nOutputs:", INIT_FAILURES))
    host = localfaas(template, runtime_client=runtime_client)
    expected = {
        "NoHandler": ("Runtime.HandlerNotFound", "Handler 'missing' missing on module 'app'"),
        "BadSyntax": ("Runtime.UserCodeSyntaxError", "Syntax error in module 'syntax': "),
        "RaisesAtImport": ("RuntimeError", "no config"),
        "NoDot": ("Runtime.MalformedHandlerName",
                  "Bad handler 'app': not enough values to unpack (expected 2, got 1)"),
    }
    for name, (error_type, message) in expected.items():
        _status, headers, body = host.invoke(name)
        error = json.loads(body)
        assert headers["X-Amz-Function-Error"] == "Unhandled", (name, error)
        assert error["errorType"] == error_type and error["errorMessage"].startswith(message), error
        assert error["requestId"] == ""  # an init error belongs to no invocation
        host.wait_for_log(name, f"Phase: init\tStatus: error\tError Type: {error_type}")
    syntax = json.loads(host.invoke("BadSyntax")[2])
    syntax_file = code / "broken" / "syntax.py"
    assert syntax["stackTrace"] == [f'  File "{syntax_file}" Line 1\n    def handler(event, context:\n']
    raising = json.loads(host.invoke("RaisesAtImport")[2])
    assert any("raise RuntimeError('no config')" in frame for frame in raising["stackTrace"]), raising


def test_concurrency_cap_throttles(host: RunningHost) -> None:
    slow = threading.Thread(target=host.invoke, args=("Capped", {"sleep": 2}))
    slow.start()
    deadline = time.monotonic() + 5
    while host.status()["functions"]["Capped"]["busy"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    status, headers, body = host.invoke("Capped", {})
    slow.join()
    assert status == 429
    assert headers["x-amzn-ErrorType"] == "TooManyRequestsException"
    assert json.loads(body)["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert host.invoke("Capped", {})[0] == 200  # capacity is back once the first one finished


def test_status_reports_environments(host: RunningHost) -> None:
    invoke_json(host, "Echo")
    result = host.cli("status")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^Echo\s+\d+\s+\d+\s+0\s+32\s+\d+\s+-$", result.stdout, re.M)
    assert host.status()["functions"]["Echo"]["warm"] >= 1


def test_cli_invoke(host: RunningHost) -> None:
    result = host.cli("invoke", "Behave", "--payload", '{"n": 1}')
    assert result.returncode == 0 and json.loads(result.stdout)["ok"] is True
    failed = host.cli("invoke", "Behave", "--payload", '{"raise": "x"}')
    assert failed.returncode == 1 and json.loads(failed.stdout)["errorType"] == "KeyError"


def test_deploy_swaps_code_without_failing_in_flight(localfaas, tmp_path: Path,
                                                     runtime_client: str) -> None:
    code = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, code)
    host = localfaas(code / "template.yaml", runtime_client=runtime_client)
    app = code / "basic" / "app.py"
    results: list[tuple[int, dict, bytes]] = []
    in_flight = threading.Thread(target=lambda: results.append(host.invoke("Capped", {"sleep": 2})))
    warm = json.loads(host.invoke("Behave", {})[2])
    in_flight.start()
    # Deploy only once the in-flight invocation runs (its cold start can take a while on a loaded
    # machine): its handler prints what it got as it starts.
    host.wait_for_log("Capped", "behave got", 20)
    app.write_text(app.read_text().replace('"version": os.environ.get("FIXTURE_VERSION", "1")',
                                           '"version": "2"'))
    deployed = host.cli("deploy")
    assert deployed.returncode == 0, deployed.stderr
    assert "Capped" in deployed.stdout and "Behave" in deployed.stdout
    fresh = json.loads(host.invoke("Behave", {})[2])
    assert fresh["version"] == "2" and fresh["pid"] != warm["pid"]
    in_flight.join()
    status, headers, body = results[0]
    assert status == 200 and "X-Amz-Function-Error" not in headers
    assert json.loads(body)["version"] == "1"  # finished on the old code
    assert host.cli("deploy").stdout.strip() == "deployed: nothing changed"


def test_unsupported_template_parts_are_reported(localfaas, tmp_path: Path) -> None:
    template = (FIXTURES / "template.yaml").read_text().replace(
        "      Handler: app.behave\n      Timeout: 2\n",
        "      Handler: app.behave\n      Timeout: 2\n      SnapStart: {ApplyOn: PublishedVersions}\n"
        "      Policies: [AWSLambdaBasicExecutionRole]\n"
        "      Events:\n        Api:\n          Type: Api\n          Properties: {Path: /x, Method: get}\n",
    ).replace("Outputs:", "  Queue:\n    Type: AWS::SQS::Queue\n\nOutputs:")
    code = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, code)
    (code / "template.yaml").write_text(template)
    host = localfaas(code / "template.yaml")
    console = host.console()
    for expected in ("function Behave: property SnapStart is not supported",
                     "function Behave: property Policies has no local effect",
                     "function Behave: event Api of type Api is not supported",
                     "resource Queue: type AWS::SQS::Queue is not supported"):
        assert expected in console
        assert any(expected in warning for warning in host.warnings)


def test_sigterm_leaves_no_processes(localfaas, runtime_client: str) -> None:
    host = localfaas(runtime_client=runtime_client)
    pids = [json.loads(host.invoke(name, {})[2])["pid"] for name in ("Echo", "Behave")]
    assert host.stop() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "stopping" in host.console()


def test_payloads_over_one_mebibyte(host: RunningHost) -> None:
    """Lambda takes and returns up to 6 MB; aiohttp's default limit is 1 MiB."""
    result, _ = invoke_json(host, "Big", {"answer": 3 * 1024 * 1024})
    assert len(result["data"]) == 3 * 1024 * 1024
    status, _, body = http("POST", host.urls["Big"], b"y" * (3 * 1024 * 1024),
                           {"Content-Type": "text/plain"})
    assert status == 200 and json.loads(body)["size"] == 3 * 1024 * 1024
    status, _, _ = http("POST", host.urls["Big"], b"y" * (7 * 1024 * 1024),
                        {"Content-Type": "text/plain"})
    assert status == 413


def test_response_over_six_megabytes_is_a_function_error(host: RunningHost) -> None:
    status, headers, body = host.invoke("Big", {"answer": 7 * 1024 * 1024})
    assert status == 200 and headers["X-Amz-Function-Error"] == "Unhandled"
    assert json.loads(body)["errorType"] == "Function.ResponseSizeTooLarge"
    after = invoke_json(host, "Big", {"answer": 10})[0]
    assert after.get("data") == "x" * 10, after  # the next one is fine

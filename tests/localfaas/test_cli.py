"""The `localfaas` command line (localfaas/__main__.py): the --parameter-overrides parser on its
own, then every command as a subprocess against a running host, as a user types them."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localfaas.__main__ import (
    EXIT_FUNCTION_FAILED,
    EXIT_NOT_INVOKED,
    OverrideError,
    parse_parameter_overrides,
    parser,
)
from tests.localfaas.conftest import FIXTURES, ROOT, RunningHost, client_args, start_host

# -- --parameter-overrides, the parser ------------------------------------------------------------


@pytest.mark.parametrize(("values", "expected"), [
    (["A=1"], {"A": "1"}),
    (["A=1", "B=2"], {"A": "1", "B": "2"}),  # several after one flag
    (["A=1 B=2"], {"A": "1", "B": "2"}),  # several in one argument
    (["ParameterKey=A,ParameterValue=1"], {"A": "1"}),
    (["ParameterKey=A,ParameterValue=1 ParameterKey=B,ParameterValue=2"], {"A": "1", "B": "2"}),
    (["ParameterKey=A,ParameterValue=1", "B=2"], {"A": "1", "B": "2"}),  # mixed, as sam deploy takes
    (["B=2 ParameterKey=A,ParameterValue=1"], {"A": "1", "B": "2"}),
    (["Url=amqp://u:p@h:5672/%2F?heartbeat=30"], {"Url": "amqp://u:p@h:5672/%2F?heartbeat=30"}),
    (["ParameterKey=List,ParameterValue=a,b,c"], {"List": "a,b,c"}),
    (["Greeting='hello world' Other=x"], {"Greeting": "hello world", "Other": "x"}),
    (['ParameterKey=Greeting,ParameterValue="hello world"'], {"Greeting": "hello world"}),
    (["Namespace="], {"Namespace": ""}),
    (["ParameterKey=Namespace,ParameterValue="], {"Namespace": ""}),
    (["RABBITMQ_URL=x"], {"RABBITMQ_URL": "x"}),
    (["A=1", "A=2"], {"A": "2"}),  # the later one wins
    ([], {}),
])
def test_parameter_overrides(values: list[str], expected: dict[str, str]) -> None:
    assert parse_parameter_overrides(values) == expected


@pytest.mark.parametrize(("values", "message"), [
    (["A=1 B"], "'B' is not Key=Value"),
    (["=1"], "'=1' is not Key=Value"),
    (["ParameterKey=A"], "'ParameterKey=A' is not Key=Value"),
    (["ParameterKey=A,Value=1"], "is not Key=Value"),
    (["Sched=rate(1 minute)"], "'minute)' is not Key=Value"),  # a value with spaces must be quoted
    (["A='unclosed"], "No closing quotation"),
    (["A=1", "template.yaml"], "put it first"),
])
def test_parameter_overrides_refused(values: list[str], message: str) -> None:
    with pytest.raises(OverrideError, match=re.escape(message)):
        parse_parameter_overrides(values)


def test_parameter_overrides_flag_takes_several_values() -> None:
    args = parser().parse_args(["start", "t.yaml", "--parameter-overrides", "A=1", "B=2",
                                "--port", "0", "--parameter-overrides", "ParameterKey=C,ParameterValue=3"])
    assert args.template == "t.yaml"
    assert parse_parameter_overrides(args.parameter_overrides) == {"A": "1", "B": "2", "C": "3"}


# -- start ----------------------------------------------------------------------------------------


def test_start_with_both_override_forms(localfaas: Callable[..., RunningHost]) -> None:
    host = localfaas(args=["--parameter-overrides", "Greeting='hello world'",
                           "ParameterKey=FixtureVersion,ParameterValue=7"])
    echo = json.loads(host.invoke("Echo", {})[2])
    assert echo["env"]["FIXTURE_GREETING"] == "hello world"
    assert json.loads(host.invoke("Behave", {})[2])["version"] == "7"


def test_start_refuses_a_malformed_override(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "localfaas", "start", str(FIXTURES / "template.yaml"), "--port", "0",
         "--run-dir", str(tmp_path), "--parameter-overrides", "Greeting=hi", "stray"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "--parameter-overrides: 'stray' is not Key=Value" in result.stderr
    assert not (tmp_path / "state.json").exists()


# -- invoke, status -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, runtime_client: str) -> Iterator[RunningHost]:
    running = start_host(FIXTURES / "template.yaml", tmp_path_factory.mktemp("cli"),
                         extra_args=client_args(runtime_client))
    yield running
    running.stop()


def invoke(host: RunningHost, name: str, payload: Any) -> subprocess.CompletedProcess[str]:
    return host.cli("invoke", name, "--payload", payload if isinstance(payload, str) else json.dumps(payload))


def test_invoke_prints_the_answer_and_exits_0(host: RunningHost) -> None:
    result = invoke(host, "Echo", {"x": 1})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["event"] == {"x": 1}
    assert result.stderr == ""


def test_invoke_payload_from_a_file(host: RunningHost, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text('{"from": "file"}')
    result = invoke(host, "Echo", f"@{event}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["event"] == {"from": "file"}


def test_invoke_function_error_exits_1(host: RunningHost) -> None:
    result = invoke(host, "Behave", {"raise": "k"})
    assert result.returncode == EXIT_FUNCTION_FAILED == 1
    error = json.loads(result.stdout)  # the error payload, as `aws lambda invoke` writes it
    assert (error["errorType"], error["errorMessage"]) == ("KeyError", "'k'")
    assert "Behave failed (FunctionError Unhandled): KeyError: 'k'" in result.stderr


def test_invoke_crashed_runtime_exits_1(host: RunningHost) -> None:
    result = invoke(host, "Behave", {"exit": 3})
    assert result.returncode == EXIT_FUNCTION_FAILED
    assert json.loads(result.stdout)["errorType"] == "Runtime.ExitError"
    assert "Runtime exited with error: exit status 3" in result.stderr


def test_invoke_http_style_5xx_exits_1(host: RunningHost) -> None:
    """No FunctionError, but what a function-URL client would see as a server error."""
    answer = {"statusCode": 503, "body": "{\"Message\": \"Unknown request.\"}"}
    result = invoke(host, "Behave", {"answer": answer})
    assert result.returncode == EXIT_FUNCTION_FAILED
    assert json.loads(result.stdout) == answer
    assert "Behave answered HTTP 503" in result.stderr
    assert "function-URL event" in result.stderr


@pytest.mark.parametrize("answer", [{"statusCode": 404, "body": "no such thing"}, {"statusCode": "500"},
                                    [1, 2], "text", None])
def test_invoke_other_answers_exit_0(host: RunningHost, answer: Any) -> None:
    """A 4xx is the function working as designed; only an integer statusCode counts."""
    result = invoke(host, "Behave", {"answer": answer})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == answer


def test_invoke_unknown_function_exits_2(host: RunningHost) -> None:
    result = invoke(host, "Nope", {})
    assert result.returncode == EXIT_NOT_INVOKED == 2
    assert result.stdout == ""
    assert "ResourceNotFoundException: Function not found" in result.stderr


def test_invoke_payload_that_is_not_json_exits_2(host: RunningHost) -> None:
    result = invoke(host, "Echo", "{not json")
    assert result.returncode == EXIT_NOT_INVOKED
    assert "InvalidRequestContentException" in result.stderr
    assert result.stdout == ""


def test_invoke_missing_payload_file_exits_2(host: RunningHost, tmp_path: Path) -> None:
    result = invoke(host, "Echo", f"@{tmp_path / 'absent.json'}")
    assert result.returncode == EXIT_NOT_INVOKED
    assert "cannot read the payload file" in result.stderr


def test_no_host_exits_2_and_says_so() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "localfaas", "status", "--endpoint", f"http://127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == EXIT_NOT_INVOKED
    assert "is localfaas running?" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_installed_command_as_the_readme_writes_it(host: RunningHost) -> None:
    """`.venv/bin/localfaas status` from the project folder: the endpoint comes from the run folder."""
    command = Path(sys.executable).with_name("localfaas")
    assert command.exists(), f"{command} is not installed (pyproject's [project.scripts])"
    result = subprocess.run([str(command), "status", "--run-dir", str(host.run_dir)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert f"endpoint {host.endpoint}" in result.stdout
    assert any(line.split()[0] == "Echo" for line in result.stdout.splitlines()[2:])

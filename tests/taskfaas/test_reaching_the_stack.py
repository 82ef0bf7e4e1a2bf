"""How `taskfaas` reaches a stack: a producer whose URL is AWS_IAM too (signed on its 403, or at
once when the Lambda API says so), stacks that are not there, and where credentials come from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfaas.client import credentials
from taskfaas.stack import (
    RABBITMQ_URL,
    REDIS_URL,
    ROOT,
    RunningHost,
    cleanup,
    http,
    new_namespace,
    stack_credentials,
    start_host,
)
from tests.taskfaas.conftest import CliRunner, runner, stack_env


@pytest.fixture(scope="module")
def iam_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningHost, Path]]:
    """The functions alone (no workers: tasks wait queued) with ProducerAuthType AWS_IAM."""
    run_dir = tmp_path_factory.mktemp("cli-iam")
    namespace = new_namespace("cliiam")  # owned by this run (a killed run's is swept by the next)
    env = {**os.environ, "NAMESPACE": namespace, "RABBITMQ_URL": RABBITMQ_URL, "REDIS_URL": REDIS_URL}
    subprocess.run([sys.executable, "infra/declare_topology.py"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    env_file, _ = stack_credentials(run_dir)
    host = start_host(ROOT / "template.yaml", run_dir / "localfaas",
                      overrides={"Namespace": namespace, "RabbitmqUrl": RABBITMQ_URL, "RedisUrl": REDIS_URL,
                                 "ProducerAuthType": "AWS_IAM"},
                      extra_args=["--env-file", str(env_file)])
    try:
        yield host, env_file
    finally:
        host.stop()
        cleanup(namespace)


def test_a_producer_url_of_auth_type_aws_iam_gets_signed_calls(iam_host: tuple[RunningHost, Path],
                                                                tmp_path: Path) -> None:
    host, env_file = iam_host
    body = json.dumps({"type": "primes", "payload": {"n": 10}}).encode()
    unsigned, _, _ = http("POST", host.urls["Producer"] + "produce", body,
                          {"Content-Type": "application/json"})
    assert unsigned == 403  # so the CLI's submissions below were signed
    cli = runner(tmp_path, stack_env(env_file), [])

    # From the state file the auth type is unknown: unsigned first, then signed on the 403.
    from_state = cli("submit", "primes", "--payload", '{"n": 10}', "--json", "--run-dir", str(host.run_dir))
    assert from_state.code == 0, from_state.err
    assert from_state.json()["status"] == "queued"
    # The Lambda API says AWS_IAM: signed at once.
    from_api = cli("submit", "primes", "--payload", '{"n": 11}', "--json", "--endpoint-url", host.endpoint)
    assert from_api.code == 0, from_api.err
    record = cli("result", from_api.json()["task_id"], "--json", "--endpoint-url", host.endpoint).json()
    assert (record["status"], record["payload"]) == ("queued", {"n": 11})


@pytest.fixture
def cli(tmp_path: Path) -> CliRunner:
    return runner(tmp_path, {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDX", "AWS_SECRET_ACCESS_KEY": "s"}, [])


def test_no_state_file_is_a_clear_error(cli: CliRunner, tmp_path: Path) -> None:
    missing = cli("workers", "--run-dir", str(tmp_path / "nowhere"))
    assert missing.code == 4 and missing.out == ""
    assert missing.err == (f"taskfaas: no running stack: {tmp_path / 'nowhere' / 'state.json'} not found "
                           "(start one with `make run`, or give --endpoint-url or "
                           "--producer-url/--supervisor-url)\n")


def test_a_stack_that_is_gone_is_a_clear_error(cli: CliRunner, tmp_path: Path) -> None:
    # What a killed host leaves behind: a state file naming ports nobody listens on.
    (tmp_path / "state.json").write_text(json.dumps({"endpoint": "http://127.0.0.1:1", "urls": {
        "Producer": "http://127.0.0.1:1/", "Supervisor": "http://127.0.0.1:1/"}}))
    for args in (["submit", "primes", "--payload", '{"n": 5}'], ["result", "x"], ["stats"], ["tail"]):
        gone = cli(*args, "--run-dir", str(tmp_path))
        assert gone.code == 4, (args, gone.err)
        assert gone.err.startswith("taskfaas: cannot reach http://127.0.0.1:1/")
        assert "is the stack running?" in gone.err
        assert gone.err.count("\n") == 1


def test_a_lambda_api_that_is_not_there_is_a_clear_error(cli: CliRunner) -> None:
    gone = cli("workers", "--endpoint-url", "http://127.0.0.1:1")
    assert gone.code == 4 and gone.err.startswith("taskfaas: cannot reach the Lambda API at http://127.0.0.1:1")


def test_credentials_come_from_the_environment_else_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "local.env"
    env_file.write_text("# comment\nREDIS_URL=redis://x\nAWS_REGION=eu-west-1\nAWS_ACCESS_KEY_ID=filekey\n"
                        "AWS_SECRET_ACCESS_KEY=filesecret\n")
    assert credentials({}, env_file) == {"AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "filekey",
                                         "AWS_SECRET_ACCESS_KEY": "filesecret"}
    environment = {"AWS_ACCESS_KEY_ID": "envkey", "AWS_SECRET_ACCESS_KEY": "envsecret", "HOME": "/root"}
    assert credentials(environment, env_file) == {"AWS_ACCESS_KEY_ID": "envkey",
                                                  "AWS_SECRET_ACCESS_KEY": "envsecret"}
    assert credentials({"AWS_ACCESS_KEY_ID": "only-a-key"}, env_file)["AWS_ACCESS_KEY_ID"] == "filekey"
    assert credentials({}, tmp_path / "none.env") == {}

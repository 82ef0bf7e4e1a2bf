"""Provisioned concurrency (ProvisionedConcurrencyConfig, with AutoPublishAlias as SAM requires):
its environments are initialized before the host says it is up, the first invocations find them
warm (no Init Duration in their REPORT lines, AWS_LAMBDA_INITIALIZATION_TYPE says
provisioned-concurrency), invocations beyond them spill over to on-demand environments, idle reaping
leaves them alone, and one that dies is replaced. Through the real host, with a function whose init
takes a second (the fixture's FIXTURE_INIT_SLEEP)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from localfaas.cfn import TemplateError
from localfaas.template import load_template
from taskfaas.stack import RunningHost, eventually
from tests.localfaas.conftest import FIXTURES
from tests.localfaas.test_pool import environment_pids

TEMPLATE = FIXTURES / "provisioned_template.yaml"


def echo(host: RunningHost, payload: dict | None = None) -> dict:
    status, _, body = host.invoke("Warm", payload or {})
    assert status == 200, body
    return json.loads(body)


def report_lines(host: RunningHost, expected: int) -> list[str]:
    """The function's REPORT lines, once there are `expected` of them (the log is written in batches)."""
    def lines() -> list[str]:
        return [line for line in host.log("Warm").splitlines() if line.startswith("REPORT")]

    eventually(lambda: len(lines()) >= expected, 10, lambda: f"REPORT lines: {lines()}")
    return lines()


def counts(host: RunningHost) -> dict:
    return host.status()["functions"]["Warm"]


def test_ready_before_the_host_is_up_and_warm_at_the_first_invocation(
        localfaas: Callable[..., RunningHost]) -> None:
    host = localfaas(TEMPLATE, args=["--idle-seconds", "0.5"])
    # start_host returns once the host wrote its state: the environments are there already.
    started = counts(host)
    assert started["provisioned"] == 2 and started["warm"] == 2, started
    before = environment_pids(host, "Warm")
    assert len(before) == 2

    with ThreadPoolExecutor(2) as pool:
        first = list(pool.map(lambda _: echo(host, {"sleep": 0.3}), range(2)))
    assert {answer["pid"] for answer in first} == before  # both served by the provisioned ones
    reports = report_lines(host, 2)
    assert len(reports) == 2 and not any("Init Duration" in line for line in reports), reports
    assert counts(host)["cold_starts"] == started["cold_starts"]  # nothing started on demand


def test_initialization_type_and_spillover(localfaas: Callable[..., RunningHost]) -> None:
    host = localfaas(TEMPLATE, args=["--idle-seconds", "1"])
    provisioned = environment_pids(host, "Warm")
    # Three at once: two provisioned environments, and one on demand for the third.
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: echo(host, {"sleep": 1.5}), range(3)))
    pids = [answer["pid"] for answer in answers]
    assert set(pids) & provisioned == provisioned
    spilled = [pid for pid in pids if pid not in provisioned]
    assert len(spilled) == 1
    reports = report_lines(host, 3)
    assert sum("Init Duration" in line for line in reports) == 1, reports  # the on-demand one's

    # Idle reaping (--idle-seconds 1) takes the on-demand environment, never a provisioned one.
    eventually(lambda: environment_pids(host, "Warm") == provisioned, 10,
               lambda: f"environments {environment_pids(host, 'Warm')}, provisioned {provisioned}")


def test_the_environment_variable_says_how_it_was_initialized(
        localfaas: Callable[..., RunningHost]) -> None:
    host = localfaas(TEMPLATE)
    pid = next(iter(environment_pids(host, "Warm")))
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"AWS_LAMBDA_INITIALIZATION_TYPE=provisioned-concurrency" in environ


def test_a_provisioned_environment_that_dies_is_replaced(localfaas: Callable[..., RunningHost]) -> None:
    host = localfaas(TEMPLATE)
    before = environment_pids(host, "Warm")
    status, _, _ = host.invoke("Warm", {"exit": 3})  # the runtime exits mid-invocation
    assert status == 200  # Lambda answers the caller with the function error, not an HTTP error
    eventually(lambda: counts(host)["provisioned"] == 2 and len(environment_pids(host, "Warm") - before) == 1,
               20, lambda: f"status {counts(host)}, pids {environment_pids(host, 'Warm')} (were {before})")
    assert len(environment_pids(host, "Warm")) == 2


def test_zero_leaves_it_out(localfaas: Callable[..., RunningHost]) -> None:
    host = localfaas(TEMPLATE, overrides={"Provisioned": "0"})
    assert counts(host)["environments"] == 0 and counts(host)["provisioned"] == 0
    answer = echo(host)
    assert answer["ok"]
    assert "Init Duration" in report_lines(host, 1)[0]


@pytest.mark.parametrize(("config", "message"), [
    ("ProvisionedConcurrencyConfig: {ProvisionedConcurrentExecutions: 2}", "requires AutoPublishAlias"),
    ("AutoPublishAlias: live\n      ProvisionedConcurrencyConfig: {ProvisionedConcurrentExecutions: 0}",
     "at least 1"),
    ("AutoPublishAlias: live\n      ReservedConcurrentExecutions: 1\n"
     "      ProvisionedConcurrencyConfig: {ProvisionedConcurrentExecutions: 2}", "at most Reserved"),
])
def test_invalid_configurations_are_refused(tmp_path: Path, config: str, message: str) -> None:
    (tmp_path / "code").mkdir()
    path = tmp_path / "template.yaml"
    path.write_text(f"""
Transform: AWS::Serverless-2016-10-31
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code/
      Handler: app.handler
      {config}
""")
    with pytest.raises(TemplateError, match=re.escape(message)):
        load_template(path, {}, {}, lambda logical_id: "http://127.0.0.1:1/")

"""The pool's line and the pacing of cold starts, through the real host: a burst of short calls is
served by a few environments, not one per caller; invocations that hold every environment do not
starve a short one, which gets a new environment after the wait; cold starts in flight never exceed
--cold-starts. An operator's hard cap (--max-environments) holds: a burst beyond it waits and
succeeds on the cap's processes. The concurrency limit (the host's, or a reserved concurrency)
still counts the waiting invocations and throttles beyond them at once; a synchronous invocation
that waits longer than --queue-seconds gets 429, an asynchronous one runs."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from localfaas.pool import default_base_environments
from taskfaas.stack import RunningHost, eventually, http
from tests.localfaas.conftest import FIXTURES

TEMPLATE = FIXTURES / "pool_template.yaml"


def environment_pids(host: RunningHost, function: str) -> set[int]:
    """The host's child processes that are environments of `function`, read from /proc."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == host.process.pid and f"AWS_LAMBDA_FUNCTION_NAME={function}".encode() in environ:
            pids.add(int(entry))
    return pids


class ProcessWatch:
    """Counts a function's environment processes every 20 ms until stopped; `most` is the peak,
    `samples` the (time, count) pairs, the time taken after the count."""

    def __init__(self, host: RunningHost, function: str) -> None:
        self.host, self.function, self.most = host, function, 0
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._done.is_set():
            count = len(environment_pids(self.host, self.function))
            self.samples.append((time.monotonic(), count))
            self.most = max(self.most, count)
            self._done.wait(0.02)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def in_background(call: Callable[[], tuple[int, dict, bytes]]) -> tuple[threading.Thread, list]:
    results: list = []
    thread = threading.Thread(target=lambda: results.append(call()))
    thread.start()
    return thread, results


def wait_for(host: RunningHost, function: str, busy: int, waiting: int = 0) -> None:
    def reached() -> bool:
        counts = host.status()["functions"][function]
        return counts["busy"] >= busy and counts["waiting"] >= waiting

    eventually(reached, 15, f"{function}: {busy} busy and {waiting} waiting")


@pytest.fixture
def capped(localfaas: Callable[..., RunningHost]) -> Iterator[Callable[..., RunningHost]]:
    yield lambda *args: localfaas(TEMPLATE, args=list(args))


def test_a_burst_of_short_invocations_is_served_by_a_few_environments(capped) -> None:
    """24 callers, 5 calls each: Lambda would start one environment per caller; here the line is
    served by the base (2) started for it, and since none is held long, no more are started."""
    host = capped("--base-environments", "2", "--scale-after-ms", "300")
    callers, calls = 24, 5

    def caller(i: int) -> list[tuple[int, dict, bytes]]:
        return [host.invoke("Slow", {"i": i, "call": call}) for call in range(calls)]

    with ProcessWatch(host, "Slow") as watch, ThreadPoolExecutor(callers) as pool:
        answers = [answer for answers in pool.map(caller, range(callers)) for answer in answers]
    assert [status for status, _, _ in answers] == [200] * callers * calls, answers
    assert 2 <= watch.most <= 4, watch.most  # 2 expected; room for a call slowed by the machine
    counts = host.status()["functions"]["Slow"]
    assert counts["cold_starts"] == watch.most and counts["queued"] >= callers - 4


def test_invocations_holding_every_environment_do_not_starve_a_short_one(capped) -> None:
    """Two 6 s invocations hold the base's 2 environments: a short one waits --scale-after-ms
    behind them, then gets a new environment and answers long before they end."""
    host = capped("--base-environments", "2", "--scale-after-ms", "100")
    holders = [in_background(lambda: host.invoke("Slow", {"sleep": 6})) for _ in range(2)]
    wait_for(host, "Slow", busy=2)
    held = environment_pids(host, "Slow")
    assert len(held) == 2
    started = time.monotonic()
    status, _, body = host.invoke("Slow", {"short": True})
    elapsed = time.monotonic() - started
    assert status == 200 and elapsed < 3.0, (status, elapsed)
    assert json.loads(body)["pid"] not in held
    assert all(thread.is_alive() for thread, _ in holders)  # answered while they still held theirs
    assert len(environment_pids(host, "Slow")) == 3
    for thread, results in holders:
        thread.join(timeout=15)
        assert results[0][0] == 200


def test_cold_starts_in_flight_never_exceed_the_limit(capped) -> None:
    """SlowInit's init takes 1 s. Six long invocations with a base of 6 get 6 environments, but
    --cold-starts 2 starts them two at a time: by t seconds after the first appeared, at most
    2 * (1 + t // 1) processes exist (all 6 at once without the pacing)."""
    host = capped("--base-environments", "6", "--cold-starts", "2")
    burst = 6
    with ProcessWatch(host, "SlowInit") as watch, ThreadPoolExecutor(burst) as pool:
        answers = list(pool.map(lambda i: host.invoke("SlowInit", {"sleep": 3.5}), range(burst)))
    assert [status for status, _, _ in answers] == [200] * burst, [body for _, _, body in answers]
    assert len({json.loads(body)["pid"] for _, _, body in answers}) == burst
    first = next(when for when, count in watch.samples if count)
    for when, count in watch.samples:
        # 0.1 s of slack: the first process may have appeared up to one sample before it was seen.
        assert count <= 2 * (1 + int((when - first + 0.1) // 1.0)), (when - first, count)
    counts = host.status()["functions"]["SlowInit"]
    assert counts["most_starting"] == 2 and counts["cold_starts"] == burst


def test_a_burst_beyond_the_hard_cap_waits_and_succeeds_on_the_cap_s_processes(capped) -> None:
    host = capped("--max-environments", "2")
    assert host.status()["functions"]["Slow"]["max_environments"] == 2
    burst, pause = 10, 0.4
    with ProcessWatch(host, "Slow") as watch, ThreadPoolExecutor(burst) as pool:
        started = time.monotonic()
        answers = list(pool.map(lambda i: host.invoke("Slow", {"sleep": pause, "i": i}), range(burst)))
        elapsed = time.monotonic() - started
    assert [status for status, _, _ in answers] == [200] * burst, [body for _, _, body in answers]
    assert len({json.loads(body)["pid"] for _, _, body in answers}) == 2
    assert watch.most == 2  # the cap held, and was used
    assert elapsed >= burst / 2 * pause  # two at a time: the others waited their turn
    counts = host.status()["functions"]["Slow"]
    assert counts["environments"] == 2 and counts["throttles"] == 0
    assert counts["queued"] >= burst - 2


@pytest.mark.parametrize(("function", "args", "reason"), [
    ("Slow", ["--concurrency", "3"], "ConcurrentInvocationLimitExceeded"),
    ("Reserved", [], "ReservedFunctionConcurrentInvocationLimitExceeded"),
])
def test_beyond_the_concurrency_limit_a_caller_is_throttled_at_once_though_others_wait(
        capped, function: str, args: list[str], reason: str) -> None:
    """The limit (3 here) counts invocations in flight, running or in line: with one environment,
    one runs, two wait, and the fourth is refused without waiting, as Lambda refuses it."""
    host = capped("--max-environments", "1", *args)
    first, first_result = in_background(lambda: host.invoke(function, {"sleep": 1.5}))
    wait_for(host, function, busy=1)
    waiting = [in_background(lambda: host.invoke(function, {})) for _ in range(2)]
    wait_for(host, function, busy=1, waiting=2)
    started = time.monotonic()
    status, headers, body = host.invoke(function, {})
    assert time.monotonic() - started < 1.0
    assert status == 429
    assert headers["x-amzn-ErrorType"] == "TooManyRequestsException"
    assert json.loads(body)["Reason"] == reason
    for thread, results in [(first, first_result), *waiting]:
        thread.join(timeout=15)
        assert results[0][0] == 200, results
    assert len(environment_pids(host, function)) == 1


def test_a_synchronous_caller_waits_queue_seconds_then_gets_429(capped) -> None:
    host = capped("--max-environments", "1", "--queue-seconds", "0.5")
    holder, held = in_background(lambda: host.invoke("Slow", {"sleep": 2.5}))
    wait_for(host, "Slow", busy=1)
    started = time.monotonic()
    status, headers, body = host.invoke("Slow", {})
    waited = time.monotonic() - started
    assert status == 429 and 0.5 <= waited < 2.0, (status, waited)
    assert headers["x-amzn-ErrorType"] == "TooManyRequestsException"
    assert json.loads(body)["Reason"] == "ConcurrentInvocationLimitExceeded"
    # An Event invocation is not timed out of the line: it waits for the environment and runs.
    status, headers, _ = host.invoke("Slow", {"marker": "late"}, {"X-Amz-Invocation-Type": "Event"})
    assert status == 202
    holder.join(timeout=15)
    assert held[0][0] == 200
    host.wait_for_log("Slow", f"END RequestId: {headers['x-amzn-RequestId']}")
    host.wait_for_log("Slow", "behave got {'marker': 'late'}")
    counts = host.status()["functions"]["Slow"]
    assert counts["queue_timeouts"] == 1 and counts["environments"] == 1
    assert host.invoke("Slow", {})[0] == 200  # the line is free again


def test_a_function_url_caller_that_waited_too_long_gets_429(capped) -> None:
    host = capped("--max-environments", "1", "--queue-seconds", "0.5")
    url = host.urls["Web"]
    holder, held = in_background(lambda: http("GET", f"{url}sleep?s=2"))
    wait_for(host, "Web", busy=1)
    status, headers, body = http("GET", f"{url}hello")
    assert status == 429
    assert headers["x-amzn-ErrorType"] == "TooManyRequestsException"
    assert json.loads(body) == {"message": "Rate Exceeded."}
    holder.join(timeout=15)
    assert held[0][0] == 200


def test_environments_are_bounded_by_the_concurrency_limit_unless_an_operator_caps_them(
        localfaas: Callable[..., RunningHost]) -> None:
    functions = localfaas(FIXTURES / "template.yaml").status()["functions"]
    assert functions["Echo"]["max_environments"] == 32  # --concurrency's default: no other cap
    assert functions["Echo"]["base_environments"] == default_base_environments() == max(4, 2 * os.cpu_count())
    assert functions["Capped"]["max_environments"] == 1  # ReservedConcurrentExecutions: 1
    from_env = localfaas(TEMPLATE, env={"LOCALFAAS_MAX_ENVIRONMENTS": "3"}).status()["functions"]
    assert from_env["Slow"]["max_environments"] == 3
    assert from_env["Reserved"]["max_environments"] == 3  # reserved 3, cap 3


def test_the_base_is_two_per_cpu_and_at_least_four() -> None:
    assert [default_base_environments(cpus) for cpus in (1, 2, 8)] == [4, 4, 16]

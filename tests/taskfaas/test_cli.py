"""`taskfaas` against a running stack, as a user runs it: the real console script in a subprocess,
the stack found from its state file (or its Lambda API), the supervisor's calls signed."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

from taskfaas.stack import Stack, eventually, http
from tests.taskfaas.conftest import TASKFAAS, CliRunner, runner

PRIMES_BELOW_50000 = 5133


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_submit_then_result_wait_gives_the_computed_value(cli: CliRunner) -> None:
    submitted = cli("submit", "primes", "--payload", '{"n": 50000}', "--no-cache", "--json")
    assert submitted.code == 0, submitted.err
    reply = submitted.json()
    assert reply["status"] in ("queued", "running") and reply["cache"] == "bypass"

    waited = cli("result", reply["task_id"], "--wait", "30", "--json")
    assert waited.code == 0, waited.err
    record = waited.json()
    assert (record["task_id"], record["status"], record["result"]) == (
        reply["task_id"], "succeeded", PRIMES_BELOW_50000)

    readable = cli("result", reply["task_id"])
    assert readable.code == 0
    lines = dict(line.split(None, 1) for line in readable.out.splitlines())
    assert (lines["status"], lines["result"], lines["type"]) == (
        "succeeded", str(PRIMES_BELOW_50000), "primes")


def test_submit_wait_and_a_cache_hit_answering_at_once(cli: CliRunner) -> None:
    payload = json.dumps({"data": unique("cli")})
    first = cli("submit", "hash", "--payload", payload, "--complexity", "2", "--wait", "30", "--json")
    assert first.code == 0, first.err
    record = first.json()
    assert record["status"] == "succeeded" and record["complexity"] == 2 and len(record["result"]) == 64

    hit = cli("submit", "hash", "--payload", payload, "--json")  # no --wait: a hit carries its result
    assert hit.code == 0, hit.err
    assert (hit.json()["cache"], hit.json()["status"], hit.json()["result"]) == (
        "hit", "succeeded", record["result"])


def test_a_failed_task_waited_for_exits_non_zero(cli: CliRunner) -> None:
    failed = cli("submit", "fail", "--payload", '{"message": "boom from the cli test"}', "--wait", "30")
    assert failed.code == 3, (failed.out, failed.err)
    assert failed.err.count("\n") == 1 and "failed: boom from the cli test" in failed.err
    assert "error         boom from the cli test" in failed.out


def test_a_wait_that_runs_out_says_so(cli: CliRunner) -> None:
    slow = cli("submit", "sleep", "--payload", '{"seconds": 5}', "--no-cache", "--wait", "0.5")
    assert slow.code == 5, (slow.out, slow.err)
    assert "not final after 0.5 s" in slow.err


def test_batches_from_repeated_payloads_and_from_a_file(cli: CliRunner, tmp_path: Path) -> None:
    batch = cli("submit", "primes", "--payload", '{"n": 10}', "--payload", '{"n": 100}', "--wait", "30",
                "--json")
    assert batch.code == 0, batch.err
    assert [r["result"] for r in batch.json()["results"]] == [4, 25]

    tasks = tmp_path / "tasks.json"
    ids = [unique("file"), unique("file")]
    tasks.write_text(json.dumps([{"type": "primes", "payload": {"n": 1000}, "task_id": ids[0]},
                                 {"type": "hash", "payload": {"data": "x"}, "task_id": ids[1]}]))
    from_file = cli("submit", f"@{tasks}", "--wait", "30")
    assert from_file.code == 0, from_file.err
    rows = from_file.out.splitlines()
    assert rows[0].split()[:3] == ["TASK_ID", "TYPE", "STATUS"]
    assert [row.split()[:3] for row in rows[1:]] == [[ids[0], "primes", "succeeded"],
                                                     [ids[1], "hash", "succeeded"]]

    mixed = cli("submit", f"@{tasks}", "--payload", "{}")
    assert mixed.code == 2 and "go with a TYPE" in mixed.err


def test_workers_and_stats_answer(cli: CliRunner, stack: Stack) -> None:
    workers = cli("workers", "--json")
    assert workers.code == 0, workers.err
    live = {w["worker_id"] for w in workers.json()["workers"]}
    assert live == {w["worker_id"] for w in stack.workers()["workers"]} and len(live) == 2
    table = cli("workers")
    assert table.out.splitlines()[0].split()[:2] == ["WORKER", "LIVE"]
    assert table.out.splitlines()[0].split()[-1] == "UNCONFIRMED_FOR"
    assert {line.split()[0] for line in table.out.splitlines()[1:]} == live
    assert {line.split()[-1] for line in table.out.splitlines()[1:]} == {"-"}  # every queue confirms

    stats = cli("stats", "--json")
    assert stats.code == 0, stats.err
    assert stats.json()["tasks"]["succeeded"] >= 1
    assert stack.namespace + "tasks.shared" in stats.json()["queues"]
    readable = cli("stats")
    succeeded = stats.json()["tasks"]["succeeded"]
    assert readable.out.startswith("tasks") and f"succeeded {succeeded}" in readable.out


def test_tail_lists_the_submitted_tasks_newest_first_with_filters(cli: CliRunner) -> None:
    ids = [unique("tail") for _ in range(3)]
    for task_id, n in zip(ids, (11, 12, 13), strict=True):
        assert cli("submit", "primes", "--payload", json.dumps({"n": n}), "--task-id", task_id).code == 0
    failing = unique("tail-fail")
    assert cli("submit", "fail", "--task-id", failing, "--no-cache", "--wait", "30").code == 3
    assert cli("result", *ids, "--wait", "30").code == 0

    newest = cli("tail", "--limit", "4", "--json")
    assert newest.code == 0, newest.err
    assert [r["task_id"] for r in newest.json()["tasks"]] == [failing, *reversed(ids)]
    table = cli("tail", "--limit", "4")
    assert table.out.splitlines()[0].split()[:3] == ["TASK_ID", "TYPE", "STATUS"]
    assert [line.split()[:3] for line in table.out.splitlines()[1:]] == [
        [failing, "fail", "failed"], *([task_id, "primes", "succeeded"] for task_id in reversed(ids))]

    failed = cli("tail", "--state", "failed", "--json").json()["tasks"]
    assert failed[0]["task_id"] == failing and {r["status"] for r in failed} == {"failed"}
    primes = cli("tail", "--type", "primes", "--limit", "3", "--json").json()["tasks"]
    assert [r["task_id"] for r in primes] == list(reversed(ids))
    both = cli("tail", "--state", "succeeded", "--type", "primes", "--limit", "2", "--json").json()["tasks"]
    assert [r["task_id"] for r in both] == [ids[2], ids[1]]
    assert cli("tail", "--state", "failed", "--type", "primes", "--json").json() == {"tasks": []}


def test_tail_follow_prints_new_tasks_as_they_arrive_and_end(stack: Stack, cli: CliRunner, tmp_path: Path,
                                                              cli_env: dict[str, str]) -> None:
    follow = subprocess.Popen([str(TASKFAAS), "tail", "--follow", "--json", "--interval", "0.2",
                               "--run-dir", str(stack.host.run_dir)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=cli_env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout], daemon=True).start()
    try:
        time.sleep(1)  # its first listing is done
        task_id = unique("follow")
        assert cli("submit", "sleep", "--payload", '{"seconds": 0.5}', "--task-id", task_id).code == 0
        statuses: list[str] = []

        def ours_ended() -> bool:
            while not lines.empty():
                record = json.loads(lines.get())
                if record["task_id"] == task_id:
                    statuses.append(record["status"])
            return "succeeded" in statuses

        eventually(ours_ended, 30, "the followed task's end")
        # Seen when it arrived, then once more when it ended; never twice in one status.
        assert statuses[0] in ("queued", "running") and statuses[-1] == "succeeded"
        assert len(statuses) == len(set(statuses))
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=10) == 0  # Ctrl-C ends it cleanly
        follow.stderr.close()


def test_bad_input_exits_non_zero_with_the_400_message(cli: CliRunner) -> None:
    bad_id = cli("result", "bad id!")
    assert bad_id.code == 1 and bad_id.out == ""
    assert bad_id.err.startswith("taskfaas: 400 invalid_ids: ids must be 1 to 100")
    assert bad_id.err.count("\n") == 1  # one line

    bad_task_id = cli("submit", "primes", "--payload", '{"n": 5}', "--task-id", "bad id!")
    assert bad_task_id.code == 1
    assert bad_task_id.err == "taskfaas: 400 invalid_task_id: task_id must match [A-Za-z0-9_.:-]{1,128}\n"

    in_batch = cli("submit", "primes", "--payload", '{"n": 5}', "--payload", '{"n": -1}')
    assert in_batch.code == 1 and "400 invalid_payload" in in_batch.err and "(task 1)" in in_batch.err

    assert cli("tail", "--limit", "101").err == \
        "taskfaas: 400 invalid_limit: limit must be an integer from 1 to 100\n"
    assert "400 invalid_state" in cli("tail", "--state", "done").err
    assert "400 invalid_limit" in cli("tail", "--follow", "--limit", "0").err  # not a follow of nothing
    unknown = cli("result", unique("never-submitted"))
    assert unknown.code == 1 and "404 not_found" in unknown.err

    not_json = cli("submit", "primes", "--payload", "{n: 5}")
    assert not_json.code == 2 and "--payload is not JSON" in not_json.err


def test_a_wrong_key_is_refused_with_403(stack: Stack, cli_env: dict[str, str], tmp_path: Path) -> None:
    wrong = runner(tmp_path, {**cli_env, "AWS_SECRET_ACCESS_KEY": "not-the-stack-secret"},
                   ["--run-dir", str(stack.host.run_dir)])
    refused = wrong("workers")
    assert refused.code == 1 and refused.err.startswith("taskfaas: 403 ")


def test_urls_from_the_lambda_api_or_given_explicitly(stack: Stack, bare_cli: CliRunner) -> None:
    via_api = bare_cli("submit", "primes", "--payload", '{"n": 50}', "--wait", "30", "--json",
                       "--endpoint-url", stack.host.endpoint)
    assert via_api.code == 0, via_api.err
    assert via_api.json()["result"] == 15

    explicit = bare_cli("workers", "--json", "--supervisor-url", stack.supervisor)
    assert explicit.code == 0 and len(explicit.json()["workers"]) == 2
    no_producer = bare_cli("submit", "primes", "--payload", '{"n": 5}', "--supervisor-url", stack.supervisor)
    assert no_producer.code == 4 and "no producer URL" in no_producer.err

    unknown_function = bare_cli("workers", "--endpoint-url", stack.host.endpoint,
                                "--supervisor-function", "Nope")
    assert unknown_function.code == 4 and "no URL for Nope" in unknown_function.err
    # What the CLI read is what the Lambda API says.
    status, _, body = http("GET", f"{stack.host.endpoint}/2021-10-31/functions/Supervisor/url")
    assert status == 200 and json.loads(body)["FunctionUrl"] == stack.supervisor

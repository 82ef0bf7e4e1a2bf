"""The fleet under faults, for real: SIGKILL, SIGTERM, a low broker heartbeat, dropped connections."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from taskcore.messages import Task, validate_task
from taskcore.store import now_ms
from taskfaas.stack import eventually
from tests.worker_fleet.conftest import Env


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_sigkilled_worker_is_restarted_under_its_id_and_its_task_redelivered(env: Env) -> None:
    fleet = env.start(workers=1, concurrency=1)
    task, = env.submit("w-0", {"type": "sleep", "payload": {"seconds": 1.5}})
    [first] = fleet.wait_event("started", task_id=task.task_id)
    os.kill(first["pid"], signal.SIGKILL)

    [result] = env.results(1, timeout=20)
    assert (result.task_id, result.status, result.result) == (task.task_id, "succeeded", {"slept": 1.5})
    assert fleet.events("worker_exited", worker_id="w-0", code=-signal.SIGKILL)
    spawned = fleet.events("worker_spawned", worker_id="w-0")
    assert len(spawned) == 2 and spawned[1]["pid"] != first["pid"]
    # The same slot id came back on the same queue and got the unacked task again.
    started = fleet.events("started", task_id=task.task_id)
    assert [e["pid"] for e in started] == [first["pid"], spawned[1]["pid"]]
    assert result.attempt == 1  # a crash does not use up an attempt
    # Executed once to its end; published once.
    assert len(fleet.events("executed", task_id=task.task_id)) == 1
    time.sleep(0.3)
    assert env.get_all(env.keys.results_queue) == []
    # Counted once, by the new process's heartbeat (the killed one never ended its attempt).
    eventually(lambda: env.store.redis.hget(env.keys.worker("w-0"), "processed") == b"1", 5, "processed 1")
    eventually(lambda: env.store.redis.hget(env.keys.worker("w-0"), "pid") == str(spawned[1]["pid"]).encode(),
               3, "the new process heartbeating as w-0")


def test_sigterm_to_the_parent_finishes_the_task_in_hand_before_exit(env: Env) -> None:
    fleet = env.start(workers=2, concurrency=1)
    task, = env.submit("w-1", {"type": "sleep", "payload": {"seconds": 1.0}})
    fleet.wait_event("started", task_id=task.task_id)
    fleet.signal(signal.SIGTERM)
    assert fleet.process.wait(timeout=15) == 0
    # Published before the fleet exited: already on the results queue.
    results = env.get_all(env.keys.results_queue)
    assert len(results) == 1 and b'"status":"succeeded"' in results[0].body
    assert env.depth(env.keys.worker_queue("w-1")) == 0
    assert len(fleet.events("draining")) == 2 and len(fleet.events("worker_stopped")) == 2
    assert fleet.events("fleet_stopped")
    assert not any(_alive(e["pid"]) for e in fleet.events("worker_spawned"))


def test_task_not_finished_within_the_grace_period_goes_back_to_its_queue(env: Env) -> None:
    fleet = env.start(workers=1, concurrency=1, grace=0.5)
    task, = env.submit("w-0", {"type": "sleep", "payload": {"seconds": 60}})
    fleet.wait_event("started", task_id=task.task_id)
    fleet.signal(signal.SIGTERM)
    assert fleet.process.wait(timeout=15) == 0
    assert fleet.events("grace_expired", requeued=[task.task_id])
    assert env.get_all(env.keys.results_queue) == []
    eventually(lambda: env.depth(env.keys.worker_queue("w-0")) == 1, 5, "the task back in its queue")


def test_task_longer_than_the_broker_heartbeat_completes_on_the_same_connection(env: Env) -> None:
    url = env.settings.rabbitmq_url
    fleet = env.start(workers=1, concurrency=1, RABBITMQ_URL=f"{url}{'&' if '?' in url else '?'}heartbeat=2")
    task, = env.submit("w-0", {"type": "sleep", "payload": {"seconds": 6}})
    [result] = env.results(1, timeout=30)
    assert (result.task_id, result.status) == (task.task_id, "succeeded")
    assert len(fleet.events("connected")) == 1
    assert fleet.events("broker_lost") == []


def test_worker_reconnects_when_its_connection_is_closed_and_finishes_the_task(env: Env) -> None:
    fleet = env.start(workers=1, concurrency=1)
    # rabbitmqctl takes a second or two per call: find the connection before the task starts.
    listing = subprocess.run(["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid",
                              "client_properties"], capture_output=True, text=True, check=True,
                             timeout=30).stdout
    name = f'{{"connection_name","worker {env.namespace}w-0"}}'
    [pid] = [line.split("\t")[0] for line in listing.splitlines() if name in line]
    task, = env.submit("w-0", {"type": "sleep", "payload": {"seconds": 4}})
    fleet.wait_event("started", task_id=task.task_id)
    subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "closed by test"], check=True, timeout=30)

    fleet.wait_event("broker_lost")
    fleet.wait_event("connected", count=2)
    [result] = env.results(1, timeout=20)
    assert (result.task_id, result.status) == (task.task_id, "succeeded")
    # The attempt on the lost connection was stopped; the redelivered one ran on the new connection.
    statuses = [e["status"] for e in fleet.events("executed", task_id=task.task_id)]
    assert statuses == ["cancelled", "succeeded"]


def test_heartbeat_survives_its_redis_connection_being_killed(env: Env) -> None:
    env.start(workers=1, concurrency=1)
    name = f"{env.namespace}heartbeat:w-0"
    # CLIENT LIST and KILL are for Redis's administrator, not for the stack's own user.
    admin = redis.Redis.from_url(os.environ.get("REDIS_ADMIN_URL", "redis://127.0.0.1:6379/0"))
    clients = eventually(lambda: [c for c in admin.client_list() if c["name"] == name], 5,
                         "the heartbeat's Redis connection")
    admin.client_kill_filter(_id=clients[0]["id"])
    killed_at = now_ms()
    eventually(lambda: int(env.store.redis.hget(env.keys.worker("w-0"), "heartbeat_at") or 0) > killed_at, 5,
               "a heartbeat after the kill")
    assert env.store.live_workers(now_ms()) == ["w-0"]


def test_workers_die_with_a_sigkilled_parent(env: Env) -> None:
    fleet = env.start(workers=2, concurrency=1)
    pids = [e["pid"] for e in fleet.events("worker_spawned")]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    fleet.signal(signal.SIGKILL)
    fleet.process.wait(timeout=5)
    eventually(lambda: not any(_alive(pid) for pid in pids), 5, "the workers to die with their parent")


def test_worker_rides_out_a_redis_restart(tmp_path: Path) -> None:
    port = _free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    env = Env(tmp_path, REDIS_URL=f"redis://127.0.0.1:{port}/0")
    try:
        eventually(lambda: _answers(env), 5, "the private Redis")
        fleet = env.start(workers=1, concurrency=1)
        first, = env.submit("w-0", {"type": "primes", "payload": {"n": 1000}})
        assert [r.status for r in env.results(1)] == ["succeeded"]

        server.terminate()
        server.wait(5)
        fleet.wait_event("redis_unavailable", op="heartbeat")
        # Without Redis the record cannot be marked running; the task runs anyway (the message is the
        # source of truth) and its result is published.
        spec = validate_task({"type": "hash", "payload": {"data": "no redis"}})
        second = Task.from_spec(spec.with_id("nr"), now_ms())
        env.broker.publish_tasks([("w.w-0", second)])
        [result] = env.results(1, timeout=20)
        assert (result.task_id, result.status) == ("nr", "succeeded")
        assert fleet.events("redis_unavailable", op="mark_running", task_id="nr")

        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # empty: no persistence
        fleet.wait_event("redis_back", op="heartbeat")
        eventually(lambda: env.store.live_workers(now_ms()) == ["w-0"], 5, "the worker live again")
        third, = env.submit("w-0", {"type": "primes", "payload": {"n": 10}})
        [result] = env.results(1)
        assert (result.task_id, result.status, result.result) == (third.task_id, "succeeded", 4)
        assert first.task_id != third.task_id
    finally:
        if server.poll() is not None:  # failed while Redis was down: the cleanup needs it
            server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            eventually(lambda: _answers(env), 5, "the private Redis")
        env.close()
        server.terminate()
        server.wait(5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(env: Env) -> bool:
    try:
        return bool(env.store.redis.ping())
    except redis.RedisError:
        return False

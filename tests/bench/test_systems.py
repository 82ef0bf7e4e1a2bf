"""bench/systems.py on a real stack (ours as `make run` starts it: localfaas, the fleet, RabbitMQ,
Redis) and bench/localfaas_bench.py's CPU per URL invocation on a real host: the figures the
benchmark's table is made of come out, per process kind, and add up to what was sent."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench import systems
from bench.localfaas_bench import Host, url_cpu
from worker_fleet.fleet import DEFAULT_CONCURRENCY, DEFAULT_WORKERS


def test_ours_cold_then_measured_with_its_cpu_split() -> None:
    with systems.ours(provisioned="2") as ours:
        assert f"{DEFAULT_WORKERS} workers x {DEFAULT_CONCURRENCY}" in ours.settings
        assert "provisioned concurrency 2" in ours.settings
        cold = systems.cold_start(ours, 8, 4)
        assert cold["accepted"] == 8 and cold["lost"] == 0 and cold["all_accepted_s"] > 0
        assert cold["all_results_s"] >= cold["all_accepted_s"]
        # The provisioned environments were there before the first task; 4 clients need at most 4.
        assert cold["environments_before"] == {"Producer": 2, "Supervisor": 2}
        assert 2 <= cold["environments_alive"]["Producer"] <= 4

        # CPU is counted in clock ticks (10 ms): enough tasks that each kind spends several (Redis
        # spends ~0.3 ms a task; at 40 tasks it once read 0 ticks).
        tasks = 200
        row = systems.measure(ours, "1 per request", 1, "one", tasks, 4, deadline=120)
        assert row["completed"] == tasks and row["lost"] == 0 and row["reads"] == "one id per GET"
        # Each task: one producer invocation, which calls the supervisor, and one read of its result.
        assert row["invocations"]["Producer"] == tasks and row["invocations"]["Supervisor"] >= 2 * tasks
        split = row["cpu_split_ms"]
        for kind in ("function Producer", "function Supervisor", "localfaas host", "workers", "rabbitmq",
                     "redis", "load generator"):
            assert split.get(kind, 0) > 0, (kind, split)
        counted = sum(ms for kind, ms in split.items() if not kind.startswith("load generator"))
        assert abs(counted - row["cpu_ms_per_task"]) < 0.01
        assert row["environments_alive"]["Producer"] <= 4
        per = row["cpu_ms_per_invocation"]
        assert per["Producer"] == round(1000 * row["cpu_seconds"]["function Producer"] / tasks, 3)
        assert per["localfaas host"] > 0

        batched = systems.measure(ours, "batches of 100", 100, "ids", 200, 4, deadline=120)
        assert batched["completed"] == 200 and batched["reads"] == "100 ids per GET"
        assert batched["invocations"]["Producer"] == 2 and batched["requests"]["polls"] <= 8


def test_cpu_per_warm_url_invocation() -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="test-urlcpu-"))
    host = Host(run_dir)
    try:
        figures = url_cpu(host, "NoopWeb", 2, 200)
    finally:
        host.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    assert figures["requests"] == 200 and figures["errors"] == 0 and figures["environments"] == 2
    assert figures["host_ms"] > 0 and figures["runtime_ms"] > 0
    assert figures["total_ms"] == round(figures["host_ms"] + figures["runtime_ms"], 3)

"""localfaas benchmark (`make bench`): warm overhead of the Invoke API and a function URL over an
in-process call, the CPU the host and the environments spend per warm invocation, a Chalice cold
start, requests/s through one URL; for each runtime interface client (official awslambdaric, and
localfaas's lean one). Runs its own hosts on free ports (bench/fixtures/template.yaml); prints one
table per client and writes bench/reports/localfaas-<time>.json."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.proc_cpu import CpuMeter  # noqa: E402
from bench.stats import percentile  # noqa: E402
from localfaas.environment import DEFAULT_RUNTIME_CLIENT  # noqa: E402

FIXTURES = ROOT / "bench" / "fixtures"
CHALICE_APP = FIXTURES / "chalice_app" / "app.py"
REPORTS = ROOT / "bench" / "reports"
INVOKE = "/2015-03-31/functions/{}/invocations"
TARGETS = {"invoke_overhead_p50_ms": 1.0, "url_overhead_p50_ms": 1.5, "cold_start_p50_ms": 500.0,
           "url_requests_per_s": 1500.0, "url_cpu_per_invocation_ms": 0.5}  # host + runtime (issue 11)
CONCURRENCY = 16
CLIENTS = ("official", "lean")  # localfaas start --runtime-client


def pct(values: list[float], q: float) -> float:
    """bench/stats.py's percentile (nearest rank), 0 for no samples so that the table still prints."""
    return percentile(values, q) or 0.0


class Host:
    """A localfaas host in a subprocess; its console goes to <run dir>/console.log."""

    def __init__(self, run_dir: Path, runtime_client: str = DEFAULT_RUNTIME_CLIENT) -> None:
        self.run_dir = run_dir
        self.console = open(run_dir / "console.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localfaas", "start", str(FIXTURES / "template.yaml"), "--port", "0",
             "--run-dir", str(run_dir), "--runtime-client", runtime_client],
            cwd=ROOT, stdout=self.console, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (run_dir / "state.json").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"localfaas did not start:\n{self.tail()}")
            time.sleep(0.05)
        state = json.loads((run_dir / "state.json").read_text())
        self.endpoint: str = state["endpoint"]
        self.urls: dict[str, str] = state["urls"]

    def invocations(self, function: str) -> int:
        client = Client(self.endpoint)
        status = json.loads(client.call("GET", "/_localfaas/status")[2])
        client.conn.close()
        return int(status["functions"][function]["invocations"])

    def tail(self, name: str = "console.log", lines: int = 20) -> str:
        text = (self.run_dir / name).read_text(errors="replace") if (self.run_dir / name).exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.console.close()


class Client:
    """One keep-alive HTTP/1.1 connection (http.client: the cheapest client side there is)."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        self.conn.request(method, path, body)
        response = self.conn.getresponse()
        return response.status, dict(response.headers), response.read()

    def timed(self, method: str, path: str, body: bytes | None, count: int, warmup: int,
              host: Host) -> tuple[list[float], dict[str, float]]:
        """Round trips in ms, after `warmup` of them, and the host's and the runtimes' CPU per
        round trip over the timed ones (one client: one warm environment does them all)."""
        samples = []
        for i in range(warmup + count):
            if i == warmup:
                meter = CpuMeter(host.process.pid).start()
            start = time.perf_counter_ns()
            if (status := self.call(method, path, body)[0]) != 200:
                raise RuntimeError(f"{method} {path} answered {status}")
            samples.append((time.perf_counter_ns() - start) / 1e6)
        meter.stop()
        self.conn.close()
        return samples[warmup:], meter.per(count)


def url_cpu(host: Host, function: str, clients: int, requests: int) -> dict[str, Any]:
    """CPU per warm invocation through a function URL, of the host and of the function's environment
    processes (bench/cpu.py, from /proc): `requests` GETs from `clients` threads on keep-alive
    connections (http.client, in this process: measured apart), after one request per client to
    start the environments. The handler does nothing, so the environments' CPU is the runtime's."""
    from concurrent.futures import ThreadPoolExecutor

    from bench import cpu

    url = host.urls[function]
    path = urlsplit(url).path or "/"

    def call(count: int) -> int:
        client, errors = Client(url), 0
        for _ in range(count):
            errors += client.call("GET", path)[0] != 200
        client.conn.close()
        return errors

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(call, [1] * clients))  # every environment started before the meter runs
        with cpu.Meter({"host": [host.process.pid], "load generator": [os.getpid()]},
                       alone=["load generator"]) as meter:
            errors = sum(pool.map(call, [requests // clients] * clients))
    done = requests // clients * clients
    kinds = cpu.per_operation(meter.used, done)["per_kind_ms"]
    runtime = kinds.get(cpu.FUNCTION_PREFIX + function, 0.0) + kinds.get(
        f"{cpu.FUNCTION_PREFIX}{function} (ended children)", 0.0)
    host_ms = kinds.get("host", 0.0) + kinds.get("host (ended children)", 0.0)
    return {"function": function, "clients": clients, "requests": done, "errors": errors,
            "host_ms": round(host_ms, 3), "runtime_ms": round(runtime, 3),
            "total_ms": round(host_ms + runtime, 3), "load_generator_ms": kinds.get("load generator"),
            "environments": meter.functions.get(function, 0), "seconds": meter.seconds}


def in_process(function: str, event: dict[str, Any], count: int) -> list[float]:
    """The same handler called directly: what the host's overhead is measured against."""
    handler = runpy.run_path(str(FIXTURES / "noop" / "app.py"))[function]
    context = SimpleNamespace(function_name="Noop", aws_request_id="bench", memory_limit_in_mb=128,
                              get_remaining_time_in_millis=lambda: 3000)
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        handler(event, context)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def cold_starts(host: Host, samples: int) -> tuple[list[float], list[float]]:
    """Rewrite the marker comment of the Chalice app, deploy (new code digest: new environments),
    time the first invoke and read its Init Duration from the function's REPORT line."""
    original, event = CHALICE_APP.read_text(), (CHALICE_APP.parent / "event.json").read_bytes()
    client = Client(host.endpoint)
    latencies, inits = [], []
    try:
        for i in range(samples):
            CHALICE_APP.write_text(re.sub(r"^# build: \d+", f"# build: {i + 1}", original, count=1))
            status, _, body = client.call("POST", "/_localfaas/deploy", b"")
            if status != 200 or "ChaliceCold" not in json.loads(body)["deployed"]:
                raise RuntimeError(f"deploy did not switch ChaliceCold: {status} {body!r}")
            time.sleep(0.3)  # let the retired environment exit before timing
            start = time.perf_counter_ns()
            status, headers, body = client.call("POST", INVOKE.format("ChaliceCold"), event)
            latencies.append((time.perf_counter_ns() - start) / 1e6)
            if status != 200 or json.loads(body).get("statusCode") != 200:
                raise RuntimeError(f"ChaliceCold answered {status} {body[:300]!r}")
            inits.append(_init_duration(host, headers["x-amzn-RequestId"]))
    finally:
        CHALICE_APP.write_text(original)
        client.conn.close()
    return latencies, inits


def _init_duration(host: Host, request_id: str) -> float:
    pattern = re.compile(rf"REPORT RequestId: {re.escape(request_id)}\t.*?Init Duration: ([\d.]+) ms")
    for _ in range(50):  # the host flushes logs twice a second
        if match := pattern.search(host.tail("logs/ChaliceCold.log", 10**6)):
            return float(match.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"no REPORT line with Init Duration for {request_id} in logs/ChaliceCold.log")


async def _loadgen(url: str, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    import aiohttp

    begin = time.perf_counter() + warmup
    end = begin + duration
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def worker(session: aiohttp.ClientSession) -> None:
        while (start := time.perf_counter()) < end:
            try:
                async with session.get(url) as response:
                    await response.read()
                    key = str(response.status)
            except (aiohttp.ClientError, OSError) as exc:
                key = type(exc).__name__
            done = time.perf_counter()
            if start >= begin and done <= end:
                statuses[key] = statuses.get(key, 0) + 1
                if key.startswith("2"):
                    latencies.append((done - start) * 1000)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    ok = len(latencies)
    return {"tool": f"aiohttp ({concurrency} tasks, separate process)", "ok": ok,
            "requests_per_s": ok / duration, "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99),
            "errors": sum(statuses.values()) - ok, "statuses": statuses}


def _wrk_figures(out: str, duration: float) -> dict[str, Any]:
    def ms(label: str) -> float:
        found = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\b", out, re.M)
        return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)] if found else 0.0

    total = int(m.group(1)) if (m := re.search(r"(\d+) requests in", out)) else 0
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    socket_errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"tool": f"wrk -t2 -c{CONCURRENCY}", "requests_per_s": (total - non2xx) / duration,
            "p50_ms": ms("50%"), "p99_ms": ms("99%"), "ok": total - non2xx,
            "errors": non2xx + socket_errors, "statuses": {}}


def throughput(host: Host, function: str, warmup: float, duration: float,
               profile: str | None) -> dict[str, Any]:
    """Load a function's URL from a separate process (wrk if installed, else aiohttp)."""
    url = host.urls[function]
    wrk = shutil.which("wrk")
    if wrk:
        asyncio.run(_loadgen(url, CONCURRENCY, 0, warmup))  # start the 16 environments first
        command = [wrk, "-t2", f"-c{CONCURRENCY}", f"-d{int(duration)}s", "--latency", url]
    else:
        command = [sys.executable, __file__, "--loadgen", url, str(warmup), str(duration)]
    procs = [loadgen := subprocess.Popen(command, stdout=subprocess.PIPE, text=True)]
    try:
        time.sleep(0.2 if wrk else warmup + 0.2)  # the environments are warm from here on
        meter, before = CpuMeter(host.process.pid).start(), host.invocations(function)
        if profile:  # py-spy samples the host only, during the measured part of the load
            spy = [shutil.which("py-spy", path=Path(sys.executable).parent) or "py-spy", "record", "-p",
                   str(host.process.pid), "-d", str(int(min(8, duration - 1))), "-f", "raw", "-o", profile,
                   "--nonblocking"]
            procs.append(subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        out = loadgen.communicate()[0]
        meter.stop()
        served = host.invocations(function) - before
        procs[-1].wait()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if loadgen.returncode != 0:
        raise RuntimeError(f"load generator failed ({loadgen.returncode}): {out[-500:]}")
    figures = _wrk_figures(out, duration) if wrk else json.loads(out)
    return figures | {"cpu": meter.per(served)}  # every invocation served while metered


def report(f: dict[str, Any], client: str) -> list[str]:
    """One client's table: latencies, and the CPU the host and the runtimes spent per invocation."""
    load, cold, over = f["url_load"], f["cold"], f["overhead"]
    verdict = {k: "met" if ok else "NOT MET" for k, ok in f["met"].items()}
    rows = [
        ("Invoke API warm round trip (Noop)", f["invoke"], "", ""),
        ("Function URL warm round trip (NoopWeb)", f["url"], "", ""),
        ("Overhead, Invoke API", over["invoke"], "p50 <= 1 ms", verdict["invoke_overhead_p50_ms"]),
        ("Overhead, function URL", over["url"], "p50 <= 1.5 ms", verdict["url_overhead_p50_ms"]),
        ("Overhead, Invoke API, python3.11 runtime", over["invoke311"], "p50 <= 1 ms",
         verdict["invoke311_overhead_p50_ms"]),
        ("Overhead, function URL, python3.11 runtime", over["url311"], "p50 <= 1.5 ms",
         verdict["url311_overhead_p50_ms"]),
        (f"Cold start, Chalice, first invoke (N={cold['samples']})", {"p50_ms": cold["p50_ms"],
         "p99_ms": cold["max_ms"]}, "p50 <= 500 ms", verdict["cold_start_p50_ms"]),
        ("  of which Init Duration (REPORT line)", {"p50_ms": cold["init_p50_ms"],
         "p99_ms": cold["init_max_ms"]}, "", ""),
        (f"Latency at load ({CONCURRENCY} clients, NoopWeb URL)", load, "", ""),
    ]
    cpu_rows = [("Invoke API, one client, warm (Noop)", f["invoke"]["cpu"], "", ""),
                ("Function URL, one client, warm (NoopWeb)", f["url"]["cpu"],
                 "<= 0.5 ms", verdict["url_cpu_per_invocation_ms"]),
                ("Invoke API, python3.11 runtime (Noop311)", f["invoke311"]["cpu"], "", ""),
                ("Function URL, python3.11 runtime (NoopWeb311)", f["url311"]["cpu"], "", ""),
                (f"Function URL at load ({CONCURRENCY} clients, NoopWeb)", load["cpu"], "", "")]
    rule = "-" * 96
    lines = [f"runtime client: {client}",
             f"{'measure':<50} {'p50 ms':>9} {'p99/max':>9}  {'target':<16} verdict", rule]
    lines += [f"{name:<50} {v['p50_ms']:>9.3f} {v['p99_ms']:>9.3f}  {target:<16} {ok}"
              for name, v, target, ok in rows]
    lines += [f"{'Requests/s through one URL (2xx only)':<50} {load['requests_per_s']:>19,.0f}  "
              f"{'>= 1,500/s':<16} {verdict['url_requests_per_s']}", rule,
              f"{'CPU per invocation (ms, from /proc)':<50} {'host':>9} {'runtime':>9} {'both':>7}  "
              f"{'target':<10} verdict"]
    lines += [f"{name:<50} {c['host_ms']:>9.3f} {c['runtime_ms']:>9.3f} {c['total_ms']:>7.3f}  "
              f"{target:<10} {ok}" for name, c, target, ok in cpu_rows]
    lines += [rule, f"load: {load['tool']}, {load['ok']} ok, {load['errors']} errors {load['statuses']}"]
    return lines


def measure(client: str, quick: bool, profile: str | None) -> dict[str, Any]:
    """Everything for one runtime client, on a host of its own."""
    warm, warmup = (300, 50) if quick else (3000, 500)
    cold_n = 3 if quick else 10
    load_warmup, load_seconds = (1.0, 4.0) if quick else (3.0, 10.0)
    run_dir = Path(tempfile.mkdtemp(prefix="localfaas-bench-"))
    host: Host | None = None
    series: dict[str, Any] = {}
    try:
        host = Host(run_dir, client)
        for name, function in (("invoke", "Noop"), ("invoke311", "Noop311")):
            series[name] = Client(host.endpoint).timed("POST", INVOKE.format(function), b"{}", warm, warmup,
                                                       host)
        for name, function in (("url", "NoopWeb"), ("url311", "NoopWeb311")):
            series[name] = Client(host.urls[function]).timed(
                "GET", urlsplit(host.urls[function]).path or "/", None, warm, warmup, host)
        latencies, inits = cold_starts(host, cold_n)
        load = throughput(host, "NoopWeb", load_warmup, load_seconds, profile and f"{profile}.{client}")
    finally:
        if host is not None:
            if sys.exc_info()[0] is not None:
                print(f"host console (tail):\n{host.tail()}", file=sys.stderr)
            host.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    f: dict[str, Any] = {k: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "samples": len(v), "cpu": cpu}
                         for k, (v, cpu) in series.items()}
    f["cold"] = {"samples": cold_n, "p50_ms": pct(latencies, 50), "max_ms": max(latencies),
                 "init_p50_ms": pct(inits, 50), "init_max_ms": max(inits),
                 "latencies_ms": latencies, "init_durations_ms": inits}
    f["url_load"] = load
    return f


def judge(f: dict[str, Any], baselines: dict[str, Any]) -> None:
    """Overheads over the in-process calls, and each target met or not."""
    f["overhead"] = {name: {k: f[name][k] - baselines[base][k] for k in ("p50_ms", "p99_ms")}
                     for name, base in (("invoke", "in_process"), ("url", "in_process_web"),
                                        ("invoke311", "in_process"), ("url311", "in_process_web"))}
    over, t = f["overhead"], TARGETS
    f["met"] = {"invoke_overhead_p50_ms": over["invoke"]["p50_ms"] <= t["invoke_overhead_p50_ms"],
                "url_overhead_p50_ms": over["url"]["p50_ms"] <= t["url_overhead_p50_ms"],
                "cold_start_p50_ms": f["cold"]["p50_ms"] <= t["cold_start_p50_ms"],
                "invoke311_overhead_p50_ms": over["invoke311"]["p50_ms"] <= t["invoke_overhead_p50_ms"],
                "url311_overhead_p50_ms": over["url311"]["p50_ms"] <= t["url_overhead_p50_ms"],
                "url_requests_per_s": f["url_load"]["requests_per_s"] >= t["url_requests_per_s"],
                "url_cpu_per_invocation_ms": f["url"]["cpu"]["total_ms"] <= t["url_cpu_per_invocation_ms"]}


def run(quick: bool, profile: str | None, clients: list[str], rounds: int) -> dict[str, Any]:
    """The clients in turn, `rounds` times over (interleaved: the machine's other load changes
    over minutes, and each client should see the same share of it)."""
    load_average = os.getloadavg()[0]
    warm = 300 if quick else 3000
    web_event = {"version": "2.0", "rawPath": "/"}
    baselines = {name: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "samples": len(v)}
                 for name, v in (("in_process", in_process("handler", {}, warm)),
                                 ("in_process_web", in_process("web", web_event, warm)))}
    results: list[dict[str, Any]] = []
    for round_ in range(rounds):
        for client in clients:
            figures = measure(client, quick, profile)
            judge(figures, baselines)
            results.append({"client": client, "round": round_ + 1, **figures})
    return {"baselines": baselines, "runs": results, "load_average_before": load_average}


def summary(f: dict[str, Any]) -> list[str]:
    """CPU per warm function-URL invocation, per client over the rounds (min-max)."""
    lines = [f"{'CPU per warm URL invocation, ms (min-max)':<44} {'host':>13} {'runtime':>13} {'both':>13}"]
    for client in dict.fromkeys(run["client"] for run in f["runs"]):
        for label, key in (("one client", "url"), (f"{CONCURRENCY} clients", "url_load")):
            cpus = [run[key]["cpu"] for run in f["runs"] if run["client"] == client]
            spans = [f"{min(c[k] for c in cpus):.3f}-{max(c[k] for c in cpus):.3f}"
                     for k in ("host_ms", "runtime_ms", "total_ms")]
            lines.append(f"{client + ', ' + label:<44} {spans[0]:>13} {spans[1]:>13} {spans[2]:>13}")
    base = f["baselines"]
    lines += [f"in-process handler call (the overheads' baseline): {base['in_process']['p50_ms']:.3f} ms p50",
              "overheads = round trip minus in-process call; the cold start column p99/max is the max.",
              f"note: this machine has {os.cpu_count()} cores; the load generator, the host and its "
              f"{CONCURRENCY} runtime processes all compete for them",
              f"      (1-min load average before the run: {f['load_average_before']:.2f}; latencies and "
              "requests/s move with other work on the machine, CPU per invocation much less)."]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (~20 s), for development")
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy the host during the URL load (raw format, FILE.<client>)")
    parser.add_argument("--clients", default=",".join(CLIENTS),
                        help=f"runtime interface clients to measure, in turn (default {','.join(CLIENTS)})")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every client this many times, interleaved")
    parser.add_argument("--loadgen", nargs=3, metavar=("URL", "WARMUP", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        url, warmup, seconds = args.loadgen
        with contextlib.suppress(ImportError):  # a cheaper client leaves more CPU to the host
            import uvloop
            uvloop.install()
        print(json.dumps(asyncio.run(_loadgen(url, CONCURRENCY, float(warmup), float(seconds)))))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the host is stopped on SIGTERM too
    started = time.strftime("%Y%m%d-%H%M%S")
    clients = [client.strip() for client in args.clients.split(",") if client.strip()]
    if unknown := set(clients) - set(CLIENTS):
        parser.error(f"unknown runtime clients {sorted(unknown)}: choose from {', '.join(CLIENTS)}")
    figures = run(args.quick, args.profile, clients, args.rounds)
    print(f"localfaas benchmark ({'quick' if args.quick else 'full'}{', profiled' if args.profile else ''})")
    for result in figures["runs"]:
        print("\n".join(report(result, f"{result['client']} (round {result['round']})")) + "\n")
    print("\n".join(summary(figures)))
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"localfaas-{started}.json"
    path.write_text(json.dumps({"started": started, "mode": "quick" if args.quick else "full",
                                "profiled": bool(args.profile), "cpu_count": os.cpu_count(),
                                "python": sys.version.split()[0], "targets": TARGETS, **figures}, indent=2))
    print(f"report: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

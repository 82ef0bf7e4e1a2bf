"""localfaas benchmark (`make bench`): warm overhead of the Invoke API and a function URL over an
in-process call, a Chalice cold start, requests/s through one URL. Runs its own host on free ports
(bench/fixtures/template.yaml); prints one table and writes bench/reports/localfaas-<time>.json."""

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

from bench.stats import percentile  # noqa: E402

FIXTURES = ROOT / "bench" / "fixtures"
CHALICE_APP = FIXTURES / "chalice_app" / "app.py"
REPORTS = ROOT / "bench" / "reports"
INVOKE = "/2015-03-31/functions/{}/invocations"
TARGETS = {"invoke_overhead_p50_ms": 1.0, "url_overhead_p50_ms": 1.5, "cold_start_p50_ms": 500.0,
           "url_requests_per_s": 1500.0, "url_cpu_ms": 0.5}
CONCURRENCY = 16


def pct(values: list[float], q: float) -> float:
    """bench/stats.py's percentile (nearest rank), 0 for no samples so that the table still prints."""
    return percentile(values, q) or 0.0


class Host:
    """A localfaas host in a subprocess; its console goes to <run dir>/console.log."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.console = open(run_dir / "console.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localfaas", "start", str(FIXTURES / "template.yaml"), "--port", "0",
             "--run-dir", str(run_dir)], cwd=ROOT, stdout=self.console, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (run_dir / "state.json").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"localfaas did not start:\n{self.tail()}")
            time.sleep(0.05)
        state = json.loads((run_dir / "state.json").read_text())
        self.endpoint: str = state["endpoint"]
        self.urls: dict[str, str] = state["urls"]

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

    def timed(self, method: str, path: str, body: bytes | None, count: int, warmup: int) -> list[float]:
        samples = []
        for _ in range(warmup + count):
            start = time.perf_counter_ns()
            if (status := self.call(method, path, body)[0]) != 200:
                raise RuntimeError(f"{method} {path} answered {status}")
            samples.append((time.perf_counter_ns() - start) / 1e6)
        self.conn.close()
        return samples[warmup:]


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
        if profile:  # py-spy samples the host only, during the measured part of the load
            time.sleep((0 if wrk else warmup) + 0.5)
            spy = [shutil.which("py-spy", path=Path(sys.executable).parent) or "py-spy", "record", "-p",
                   str(host.process.pid), "-d", str(int(min(8, duration - 1))), "-f", "raw", "-o", profile,
                   "--nonblocking"]
            procs.append(subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        out = loadgen.communicate()[0]
        procs[-1].wait()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if loadgen.returncode != 0:
        raise RuntimeError(f"load generator failed ({loadgen.returncode}): {out[-500:]}")
    return _wrk_figures(out, duration) if wrk else json.loads(out)


def report(f: dict[str, Any]) -> list[str]:
    load, load311, cold, over = f["url_load"], f["url_load311"], f["cold"], f["overhead"]
    verdict = {k: "met" if ok else "NOT MET" for k, ok in f["met"].items()}
    rows = [
        ("Invoke API warm round trip (Noop)", f["invoke"], "", ""),
        ("Function URL warm round trip (NoopWeb)", f["url"], "", ""),
        ("In-process handler call (baseline)", f["in_process"], "", ""),
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
        (f"Latency at load ({CONCURRENCY} clients, NoopWeb311 URL)", load311, "", ""),
    ]
    lines = [f"{'measure':<46} {'p50 ms':>9} {'p99/max':>9}  {'target':<16} verdict", "-" * 92]
    lines += [f"{name:<46} {v['p50_ms']:>9.3f} {v['p99_ms']:>9.3f}  {target:<16} {ok}"
              for name, v, target, ok in rows]
    lines += ["-" * 92, f"{'CPU per warm URL invocation (/proc), ms':<46} {'host':>9} {'runtime':>9}  "
              f"{'host + runtime':<16} verdict"]
    for name, run_cpu in f["url_cpu"].items():
        judged = name == f"NoopWeb, {CONCURRENCY} clients"
        lines.append(f"{'  ' + name + ', ' + format(run_cpu['requests'], ',') + ' requests':<46} "
                     f"{run_cpu['host_ms']:>9.3f} {run_cpu['runtime_ms']:>9.3f}  "
                     f"{format(run_cpu['total_ms'], '.3f') + (' (<= 0.5)' if judged else ''):<16} "
                     f"{verdict['url_cpu_ms'] if judged else ''}")
    lines += ["-" * 92]
    lines += [f"{'Requests/s through one URL (2xx only)':<46} {load['requests_per_s']:>19,.0f}  "
              f"{'>= 1,500/s':<16} {verdict['url_requests_per_s']}",
              f"{'Requests/s through one URL, python3.11':<46} {load311['requests_per_s']:>19,.0f}  "
              f"{'>= 1,500/s':<16} {verdict['url311_requests_per_s']}", "-" * 92,
              f"load: {load['tool']}, {load['ok']} ok, {load['errors']} errors {load['statuses']}",
              "overheads = round trip minus in-process call; the cold start column p99/max is the max.",
              f"note: this machine has {os.cpu_count()} cores; the load generator, the host and its "
              f"{CONCURRENCY} runtime processes all compete for them",
              f"      (1-min load average before the run: {f['load_average_before']:.2f}; "
              "other work on the machine shows up in these figures)."]
    return lines


def run(quick: bool, profile: str | None) -> dict[str, Any]:
    warm, warmup = (300, 50) if quick else (3000, 500)
    cold_n = 3 if quick else 10
    load_warmup, load_seconds = (1.0, 4.0) if quick else (3.0, 10.0)
    run_dir, load_average = Path(tempfile.mkdtemp(prefix="localfaas-bench-")), os.getloadavg()[0]
    host: Host | None = None
    try:
        host = Host(run_dir)
        invoke = Client(host.endpoint).timed("POST", INVOKE.format("Noop"), b"{}", warm, warmup)
        url = Client(host.urls["NoopWeb"]).timed("GET", urlsplit(host.urls["NoopWeb"]).path or "/", None,
                                                 warm, warmup)
        invoke311 = Client(host.endpoint).timed("POST", INVOKE.format("Noop311"), b"{}", warm, warmup)
        url311 = Client(host.urls["NoopWeb311"]).timed(
            "GET", urlsplit(host.urls["NoopWeb311"]).path or "/", None, warm, warmup)
        baseline = in_process("handler", {}, warm)
        web = in_process("web", {"version": "2.0", "rawPath": "/"}, warm)
        cpu_n = 1000 if quick else 4800
        url_cpu_runs = {f"{function}, {clients} client{'s' if clients > 1 else ''}":
                        url_cpu(host, function, clients, cpu_n)
                        for function in ("NoopWeb", "NoopWeb311") for clients in (1, CONCURRENCY)}
        latencies, inits = cold_starts(host, cold_n)
        load = throughput(host, "NoopWeb", load_warmup, load_seconds, profile)
        load311 = throughput(host, "NoopWeb311", load_warmup, load_seconds, None)
    finally:
        if host is not None:
            if sys.exc_info()[0] is not None:
                print(f"host console (tail):\n{host.tail()}", file=sys.stderr)
            host.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    series = {"invoke": invoke, "url": url, "invoke311": invoke311, "url311": url311,
              "in_process": baseline, "in_process_web": web}
    f: dict[str, Any] = {k: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "samples": len(v)}
                         for k, v in series.items()}
    f["overhead"] = {name: {k: f[name][k] - f[base][k] for k in ("p50_ms", "p99_ms")}
                     for name, base in (("invoke", "in_process"), ("url", "in_process_web"),
                                        ("invoke311", "in_process"), ("url311", "in_process_web"))}
    f["cold"] = {"samples": cold_n, "p50_ms": pct(latencies, 50), "max_ms": max(latencies),
                 "init_p50_ms": pct(inits, 50), "init_max_ms": max(inits),
                 "latencies_ms": latencies, "init_durations_ms": inits}
    f["url_load"], f["url_load311"], f["load_average_before"] = load, load311, load_average
    f["url_cpu"] = url_cpu_runs
    over, t = f["overhead"], TARGETS
    f["met"] = {"invoke_overhead_p50_ms": over["invoke"]["p50_ms"] <= t["invoke_overhead_p50_ms"],
                "url_overhead_p50_ms": over["url"]["p50_ms"] <= t["url_overhead_p50_ms"],
                "cold_start_p50_ms": f["cold"]["p50_ms"] <= t["cold_start_p50_ms"],
                "invoke311_overhead_p50_ms": over["invoke311"]["p50_ms"] <= t["invoke_overhead_p50_ms"],
                "url311_overhead_p50_ms": over["url311"]["p50_ms"] <= t["url_overhead_p50_ms"],
                "url_requests_per_s": load["requests_per_s"] >= t["url_requests_per_s"],
                # Issue 11: host + runtime CPU per warm URL invocation, under load (python3.12).
                "url_cpu_ms": url_cpu_runs[f"NoopWeb, {CONCURRENCY} clients"]["total_ms"] <= t["url_cpu_ms"],
                "url311_requests_per_s": load311["requests_per_s"] >= t["url_requests_per_s"]}
    return f


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (~20 s), for development")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the host during the URL load (raw format)")
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
    figures = run(args.quick, args.profile)
    print(f"localfaas benchmark ({'quick' if args.quick else 'full'}{', profiled' if args.profile else ''})")
    print("\n".join(report(figures)))
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"localfaas-{started}.json"
    path.write_text(json.dumps({"started": started, "mode": "quick" if args.quick else "full",
                                "profiled": bool(args.profile), "cpu_count": os.cpu_count(),
                                "python": sys.version.split()[0], "targets": TARGETS, **figures}, indent=2))
    print(f"report: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

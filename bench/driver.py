"""The load generator's engine: drives any system that speaks the task HTTP contract (bench/contract.py).

Submissions and results each have their own aiohttp session (keep-alive, connector limit = the
bound), so 20,000 tasks never mean 20,000 open requests: at most `concurrency` submissions and at
most `poll_concurrency` result requests. Of the latter, a quarter (at least 1) are plain GETs for
the tasks that are probably final already (final when submitted, like a cache hit, or the same work
as a task just seen final, like a coalesced duplicate), so that those never wait behind parked
long-polls; the others long-poll, each taking the oldest submitted task that has not ended and
putting it back at the end of the line if the wait ran out (bench/lanes.py). A long-poll occupies
a server slot (a function environment, a thread) while it waits, which is why it is bounded too;
the "finish-to-pickup" figure shows how long a finished task took to reach the client (the
system's result path plus any wait for a poll slot).

``run_load`` returns a ``LoadReport`` (bench/stats.py, which also draws its figures; bench/report.py
prints the table and writes the JSON and the chart). The tasks come from bench/workload.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.contract import (
    FINAL_STATUSES,
    RETRY_STATUSES,
    base_url,
    failure_kind,
    produce_headers,
    same_key,
    signed_get,
    work_key,
)
from bench.lanes import Lanes
from bench.stats import LoadReport, RequestSample, TaskOutcome
from taskcore.signing import Signer

MAX_POLL_WAIT = 20.0
NOT_FOUND_LIMIT = 3
MIN_POLL_INTERVAL = 0.1  # seconds: a long-poller asks at most this often when answers come back unfinished


@dataclass
class Progress:
    total: int
    submitted: int = 0
    done: int = 0
    failed: int = 0
    lost: int = 0  # rejected or lost so far
    retries: int = 0
    elapsed: float = 0.0
    final: bool = False


# The engine ---------------------------------------------------------------------------------------

ProgressCallback = Callable[[Progress], None]


class _Run:
    def __init__(self, tasks: Sequence[dict[str, Any]], producer_url: str, results_url: str | None,
                 concurrency: int, batch: int, rate: float | None, deadline: float,
                 poll_concurrency: int, poll_wait: float, request_timeout: float, poll_batch: int,
                 signer: Signer | None = None, sign_submissions: bool = False) -> None:
        self.tasks = tasks
        self.produce_url = base_url(producer_url) + "produce"  # type: ignore[operator]
        self.results_base = base_url(results_url)
        self.concurrency, self.batch, self.rate = concurrency, batch, rate
        self.poll_concurrency, self.poll_wait, self.poll_batch = poll_concurrency, poll_wait, poll_batch
        self.signer = signer
        self.submit_signer = signer if sign_submissions else None  # the producer's URL may be NONE
        self.request_timeout = request_timeout
        self.t0 = time.monotonic()
        self.end = self.t0 + deadline
        firsts: dict[str, int] = {}
        self.outcomes = [TaskOutcome(i, str(t.get("type")), _int(t.get("complexity", 1)),
                                     same_as=firsts.setdefault(same_key(t), i))
                         for i, t in enumerate(tasks)]
        self.requests: list[RequestSample] = []
        self.counters: Counter[str] = Counter()
        self.not_found: Counter[int] = Counter()  # 404 answers, by task index
        # Failed requests that were retried, by kind: "submit: HTTP 503 unavailable", "poll: TimeoutError".
        self.errors: Counter[str] = Counter()
        self.progress = Progress(len(tasks))
        self.unresolved = len(tasks)
        self.all_resolved = asyncio.Event()
        # Tasks to fetch, in a quick lane (plain GETs, a quarter of the poll slots) and a long-poll
        # lane (the others): see bench/lanes.py.
        self.fetchers = max(1, poll_concurrency // 4)
        self.long_pollers = max(1, poll_concurrency - self.fetchers)
        self.lanes = Lanes(poll_batch, lambda index: self.outcomes[index].outcome == "pending")
        if not tasks:
            self.all_resolved.set()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.end - time.monotonic()

    def resolve(self, index: int, outcome: str, error: str | None = None) -> None:
        task = self.outcomes[index]
        if task.outcome != "pending":
            return
        task.outcome = outcome
        if error is not None:
            task.error = error
        if outcome in FINAL_STATUSES:
            self.progress.done += 1
            if outcome == "failed":
                self.progress.failed += 1
        else:
            self.progress.lost += 1
        self.unresolved -= 1
        if self.unresolved == 0:
            self.all_resolved.set()

    # Submission -----------------------------------------------------------------------------------

    async def submitter(self, session: aiohttp.ClientSession, batches: deque[tuple[int, list[int]]]) -> None:
        while batches:
            number, indexes = batches.popleft()
            if self.rate:
                delay = self.t0 + number * self.batch / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(min(delay, max(0.0, self.left())))
                elif -delay > self.counters["max_schedule_lag_ms"] / 1000:
                    self.counters["max_schedule_lag_ms"] = round(-delay * 1000)
            if self.left() <= 0:
                return
            await self.submit(session, number, indexes)

    async def submit(self, session: aiohttp.ClientSession, number: int, indexes: list[int]) -> None:
        if self.batch == 1:
            body = json.dumps(self.tasks[indexes[0]]).encode()
        else:
            body = json.dumps({"tasks": [self.tasks[i] for i in indexes]}).encode()
        sample = RequestSample(number, len(indexes), self.now())
        self.requests.append(sample)
        for i in indexes:
            self.outcomes[i].submit_start = sample.start
            self.outcomes[i].request = number
        while True:
            sample.attempts += 1
            status: int | None = None
            raw, error_name = b"", ""
            try:
                headers = produce_headers(self.submit_signer, self.produce_url, body)
                async with session.post(self.produce_url, data=body, headers=headers) as response:
                    status = response.status
                    raw = await response.read()
            except (TimeoutError, aiohttp.ClientError) as error:
                error_name = type(error).__name__
                reason = f"{error_name}: {error}"
            else:
                reason = f"HTTP {status}: {raw[:300].decode(errors='replace')}"
            sample.http_status = status
            if status in (200, 202):
                try:
                    self.accept(indexes, json.loads(raw))
                except (ValueError, TypeError, KeyError, AttributeError) as error:
                    for i in indexes:
                        self.resolve(i, "lost", f"unreadable submission reply: {error!r}")
                sample.latency = self.now() - sample.start
                return
            if status is not None and status not in RETRY_STATUSES:
                sample.latency = self.now() - sample.start
                for i in indexes:
                    self.resolve(i, "rejected", reason)
                return
            backoff = min(2.0, 0.05 * 2 ** min(sample.attempts, 6)) * random.uniform(0.5, 1.0)
            if self.left() <= backoff:
                for i in indexes:
                    self.resolve(i, "unsubmitted", f"deadline passed while retrying ({reason})")
                return
            self.counters["submit_retries"] += 1
            self.errors["submit: " + failure_kind(status, raw, error_name)] += 1
            self.progress.retries += 1
            await asyncio.sleep(backoff)

    def accept(self, indexes: list[int], reply: Any) -> None:
        items = reply["tasks"] if self.batch != 1 else [reply]
        if not isinstance(items, list) or len(items) != len(indexes):
            raise ValueError(f"expected {len(indexes)} task replies")
        now = self.now()
        for i, item in zip(indexes, items, strict=True):
            task = self.outcomes[i]
            task.submit_end = now
            task_id = item.get("task_id")
            if not isinstance(task_id, str) or not task_id:
                self.resolve(i, "lost", "no task_id in the submission reply")
                continue
            task.task_id = task_id
            task.submit_status = item.get("status")
            task.cache = "existing" if item.get("existing") else item.get("cache")
            task.result_url = item.get("result_url") if self.results_base is None else None
            if self.results_base is None and not task.result_url:
                self.resolve(i, "lost", "no results URL given and no result_url in the reply")
                continue
            self.progress.submitted += 1
            self.lanes.submitted(i, self.work_key(i), final=task.submit_status in FINAL_STATUSES)

    # Results --------------------------------------------------------------------------------------

    def work_key(self, index: int) -> str:
        return work_key(self.tasks[index])

    async def poller(self, session: aiohttp.ClientSession, quick: bool) -> None:
        """Fetches results: one GET per task, or with poll_batch > 1 one GET {results}results?ids=...
        for up to poll_batch tasks, which answers once all of them are final or the wait is over."""
        while True:
            indexes = await self.lanes.take(quick)
            left = self.left()
            if left <= 0:
                return
            wait = 0.0 if quick else max(0.0, min(self.poll_wait, left - 0.5))
            tasks = [self.outcomes[i] for i in indexes]
            if self.poll_batch > 1:
                url = f"{self.results_base}results"
                params = {"ids": ",".join(str(task.task_id) for task in tasks), "wait": f"{wait:.2f}"}
            else:
                url = (f"{self.results_base}results/{tasks[0].task_id}" if self.results_base
                       else str(tasks[0].result_url))
                params = {"wait": f"{wait:.2f}"}
            timeout = aiohttp.ClientTimeout(total=wait + self.request_timeout)
            for task in tasks:
                task.polls += 1
            self.counters["polls"] += 1
            asked = time.monotonic()
            try:
                target, headers = signed_get(self.signer, url, params)
                async with session.get(target, headers=headers, timeout=timeout) as response:
                    status = response.status
                    raw = await response.read()
            except (TimeoutError, aiohttp.ClientError) as error:
                self.poll_failed(indexes, quick, "poll: " + type(error).__name__)
                continue
            reply: Any = None
            if status in (200, 404):
                with contextlib.suppress(ValueError):
                    reply = json.loads(raw)
            if status == 404 and self.poll_batch == 1:
                self.not_found_again(indexes[0], quick, raw)
                continue
            if self.poll_batch > 1 and isinstance(reply, dict):
                records = {r.get("task_id"): r for r in reply.get("results", []) if isinstance(r, dict)}
                missing = set(reply.get("not_found") or [])
            elif isinstance(reply, dict):
                records, missing = {tasks[0].task_id: reply}, set()
            else:
                self.poll_failed(indexes, quick, "poll: " + failure_kind(status, raw))
                continue
            unfinished = False
            for index, task in zip(indexes, tasks, strict=True):
                record = records.get(task.task_id)
                if task.task_id in missing:
                    self.not_found_again(index, quick, raw)
                elif record is None:
                    self.poll_failed([index], quick, "poll: record missing from the reply")
                elif record.get("status") in FINAL_STATUSES:
                    self.settle(index, record)
                else:
                    unfinished = True
                    self.lanes.to_line(index, back=not quick)  # a long-poll ran out: to the back of the line
            # Short waits (--poll-wait 0, the deadline near) must not turn into a busy loop.
            pause = MIN_POLL_INTERVAL - (time.monotonic() - asked)
            if unfinished and not quick and pause > 0:
                await asyncio.sleep(pause)

    def poll_failed(self, indexes: list[int], quick: bool, kind: str) -> None:
        self.counters["poll_errors"] += 1
        self.errors[kind] += 1
        for index in indexes:
            self.lanes.retry(index, quick, 0.2 + random.random() * 0.3)

    def not_found_again(self, index: int, quick: bool, raw: bytes) -> None:
        self.counters["poll_not_found"] += 1
        self.not_found[index] += 1
        if self.not_found[index] >= NOT_FOUND_LIMIT:
            self.resolve(index, "lost", f"GET results: 404 {raw[:200].decode(errors='replace')}")
        else:
            self.lanes.retry(index, quick, 0.25)

    def settle(self, index: int, record: dict[str, Any]) -> None:
        task = self.outcomes[index]
        task.result_at = self.now()
        task.worker_id = record.get("worker_id")
        task.stolen_from = record.get("stolen_from")
        finished, submitted = record.get("finished_at"), record.get("submitted_at")
        if isinstance(finished, int | float) and isinstance(submitted, int | float):
            task.server_ms = float(finished - submitted)
            task.server_submitted_at, task.server_finished_at = float(submitted), float(finished)
        error = record.get("error")
        self.resolve(index, record["status"], error if isinstance(error, str) else None)
        moved = self.lanes.seen_final(index, self.work_key(index))
        if moved:  # counted only when it happens, as every counter of the report
            self.counters["quick_same_work"] += moved

    # Progress -------------------------------------------------------------------------------------

    async def ticker(self, progress: ProgressCallback, interval: float) -> None:
        while True:
            self.progress.elapsed = self.now()
            progress(self.progress)
            await asyncio.sleep(interval)

    async def warm_up(self, submit_session: aiohttp.ClientSession, poll_session: aiohttp.ClientSession,
                      rounds: int = 2) -> None:
        """Requests that create no task, `concurrency` (and `poll_concurrency`) at once, so a system
        that starts execution environments on demand has them running before the clock starts: an
        empty batch (400) to the producer, an unknown id (404) to the results endpoint."""
        async def post() -> None:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                body = b'{"tasks": []}'
                headers = produce_headers(self.submit_signer, self.produce_url, body)
                async with submit_session.post(self.produce_url, data=body, headers=headers) as response:
                    await response.read()

        async def get() -> None:
            if self.results_base is None:
                return
            url = f"{self.results_base}results/warmup-{random.getrandbits(64):x}"
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                timeout = aiohttp.ClientTimeout(total=self.request_timeout)
                target, headers = signed_get(self.signer, url, {"wait": "0"})
                async with poll_session.get(target, headers=headers, timeout=timeout) as response:
                    await response.read()

        for _ in range(rounds):
            await asyncio.gather(*(post() for _ in range(self.concurrency)),
                                 *(get() for _ in range(self.poll_concurrency)))

    async def run(self, progress: ProgressCallback | None, progress_interval: float,
                  warmup: bool = False) -> None:
        numbers = range(math.ceil(len(self.tasks) / self.batch))
        batches = deque((n, list(range(n * self.batch, min(len(self.tasks), (n + 1) * self.batch))))
                        for n in numbers)
        submit_connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0)
        poll_connector = aiohttp.TCPConnector(limit=self.long_pollers + self.fetchers, limit_per_host=0)
        submit_timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        async with aiohttp.ClientSession(connector=submit_connector,
                                         timeout=submit_timeout) as submit_session, \
                aiohttp.ClientSession(connector=poll_connector) as poll_session:
            if warmup:
                await self.warm_up(submit_session, poll_session)
                deadline = self.end - self.t0
                self.t0 = time.monotonic()
                self.end = self.t0 + deadline
            workers = [asyncio.create_task(self.submitter(submit_session, batches))
                       for _ in range(min(self.concurrency, len(batches)))]
            workers += [asyncio.create_task(self.poller(poll_session, quick))
                        for quick, count in ((False, self.long_pollers), (True, self.fetchers))
                        for _ in range(count)]
            ticker = asyncio.create_task(self.ticker(progress, progress_interval)) if progress else None
            try:
                await asyncio.wait_for(self.all_resolved.wait(), timeout=max(0.0, self.left()))
            except TimeoutError:
                pass
            finally:
                for job in [*workers, *([ticker] if ticker else [])]:
                    job.cancel()
                await asyncio.gather(*workers, *([ticker] if ticker else []), return_exceptions=True)
        for task in self.outcomes:
            if task.outcome == "pending":
                if task.task_id is None:
                    self.resolve(task.index, "unsubmitted", "not submitted by the deadline")
                else:
                    self.resolve(task.index, "timeout", "did not end by the deadline")
        if progress:
            self.progress.elapsed = self.now()
            self.progress.final = True
            progress(self.progress)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def run_load(tasks: Sequence[dict[str, Any]], producer_url: str, results_url: str | None = None,
                   concurrency: int = 16, batch: int = 1, rate: float | None = None,
                   deadline: float = 300.0, progress: ProgressCallback | None = None, *,
                   poll_concurrency: int | None = None, poll_wait: float = MAX_POLL_WAIT,
                   request_timeout: float = 30.0, progress_interval: float = 0.2, warmup: bool = False,
                   poll_batch: int = 1, signer: Signer | None = None, sign_submissions: bool = False,
                   config: dict[str, Any] | None = None) -> LoadReport:
    """Submits `tasks` to `producer_url` (at most `concurrency` requests at once, `batch` tasks per
    request, at `rate` tasks/s or as fast as possible), long-polls every result through
    `results_url` (at most `poll_concurrency` at once, default `concurrency`) and stops at the
    latest `deadline` seconds after the start. `progress` is called every `progress_interval`
    seconds and once more at the end (with final=True). With `poll_batch` > 1, one request asks for
    up to that many results (GET {results_url}results?ids=...&wait=S). With a `signer`, result
    requests are signed (SigV4, for an AWS_IAM URL), and submissions too with `sign_submissions`.
    With `warmup`, requests that create no
    task start the target's execution environments first (not timed: see _Run.warm_up)."""
    if concurrency < 1 or batch < 1 or poll_batch < 1:
        raise ValueError("concurrency, batch and poll_batch must be at least 1")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    if poll_batch > 1 and results_url is None:
        raise ValueError("poll_batch > 1 needs results_url")
    if not 0 <= poll_wait <= MAX_POLL_WAIT:
        raise ValueError(f"poll_wait must be from 0 to {MAX_POLL_WAIT:g}")
    poll_concurrency = poll_concurrency or concurrency
    run = _Run(tasks, producer_url, results_url, concurrency, batch, rate, deadline, poll_concurrency,
               poll_wait, request_timeout, poll_batch, signer, sign_submissions)
    await run.run(progress, progress_interval, warmup)
    counters = dict(run.counters)
    counters.update({f"error {kind}": count for kind, count in sorted(run.errors.items())})
    settings = {"tasks": len(tasks), "producer": producer_url, "results": results_url,
                "concurrency": concurrency, "poll_concurrency": poll_concurrency, "batch": batch,
                "rate": rate, "deadline_s": deadline, "poll_wait_s": poll_wait, "poll_batch": poll_batch,
                "warmup": warmup}
    elapsed = run.now()
    return LoadReport(config={**settings, **(config or {})}, started_at=time.time() - elapsed,
                      elapsed=elapsed, tasks=run.outcomes, requests=run.requests, counters=counters)

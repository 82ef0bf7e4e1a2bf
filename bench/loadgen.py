"""The load generator: drives any system that speaks the task HTTP contract, and summarises the run.

The contract is the only coupling (the same engine drives this project and its peers behind small
HTTP fronts):

- ``POST {producer}produce`` with one task ``{"type", "payload", "complexity", ...}`` or
  ``{"tasks": [...]}`` -> 200/202 with ``{"task_id", "status", "cache", "existing", ...}`` (or
  ``{"tasks": [...]}`` in the same order). 429, 502, 503, 504 and transport errors are retried with
  backoff until the deadline; any other status rejects the request's tasks.
- ``GET {results}results/{task_id}?wait=S`` -> 200 with the record; it is final when ``status`` is
  ``succeeded`` or ``failed``. A task answered 404 three times is lost. When no results URL is
  given, the ``result_url`` of each submission reply is long-polled instead.
- Optional fields are used when present: ``cache`` and ``existing`` in the submission reply (the
  cache outcome), ``worker_id``, ``submitted_at`` and ``finished_at`` (epoch ms, the server's view
  of the task, and the time from its end to the client holding the result) in the record.

Submissions and results each have their own aiohttp session (keep-alive, connector limit = the
bound), so 20,000 tasks never mean 20,000 open requests: at most `concurrency` submissions and at
most `poll_concurrency` result requests. Of the latter, a quarter (at least 1) are plain GETs for
the tasks that are probably final already (final when submitted, like a cache hit, or the same work
as a task just seen final, like a coalesced duplicate), so that those never wait behind parked
long-polls; the others long-poll, each taking the oldest submitted task that has not ended and
putting it back at the end of the line if the wait ran out. A long-poll occupies a server slot (a
function environment, a thread) while it waits, which is why it is bounded too; the
"finish-to-pickup" figure shows how long a finished task took to reach the client (the system's
result path plus any wait for a poll slot).

``run_load`` returns a ``LoadReport``; ``summarize`` and ``format_summary`` turn it into the
figures and the table; ``percentile`` is nearest-rank.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import math
import random
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yarl

from taskcore.signing import Signer

FINAL_STATUSES = ("succeeded", "failed")
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Outcomes of a task at the end of a run. The first two are "ended"; the others make the run fail.
ENDED = ("succeeded", "failed")
NOT_ENDED = ("rejected", "lost", "timeout", "unsubmitted")
CACHE_OUTCOMES = ("hit", "coalesced", "miss", "bypass", "existing")
EXPECTED_FAILURE_TYPE = "fail"
MAX_POLL_WAIT = 20.0
NOT_FOUND_LIMIT = 3
MIN_POLL_INTERVAL = 0.1  # seconds: a long-poller asks at most this often when answers come back unfinished
JSON_HEADERS = {"Content-Type": "application/json"}


# Tasks --------------------------------------------------------------------------------------------

def make_tasks(count: int, seed: int, repeat_share: float = 0.2,
               include_failures: bool = False) -> list[dict[str, Any]]:
    """`count` tasks from `seed`: round(count x repeat_share) of them are copies of earlier ones
    (same type, payload and complexity), placed at random after their original, so they meet the
    original still running (coalesced) or finished (cache hit). The same arguments give the same
    list. The originals are `taskcore.producer.generate_tasks(unique, seed)`."""
    from taskcore.producer import generate_tasks

    if count < 0:
        raise ValueError("count must not be negative")
    if not 0 <= repeat_share <= 1:
        raise ValueError("repeat_share must be from 0 to 1")
    repeats = round(count * repeat_share)
    unique = count - repeats
    if count and unique == 0:
        unique, repeats = 1, count - 1
    originals = [{"type": s.type, "payload": s.payload, "complexity": s.complexity}
                 for s in generate_tasks(unique, seed, include_failures)]
    rng = random.Random(seed * 1_000_003 + 17)
    keyed: list[tuple[float, int, dict[str, Any]]] = [(float(i), 0, task) for i, task in enumerate(originals)]
    for _ in range(repeats):
        k = rng.randrange(unique)
        # Strictly after the original (ties sort originals first), anywhere up to the end.
        keyed.append((k + rng.random() * (unique - k), 1, originals[k]))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [copy.deepcopy(task) for _, _, task in keyed]


def load_tasks(path: str | Path) -> list[dict[str, Any]]:
    """Tasks to replay: a JSON list of task objects (or {"tasks": [...]}), sent as they are."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        data = data["tasks"]
    if not isinstance(data, list) or not all(isinstance(task, dict) for task in data):
        raise ValueError(f"{path}: expected a JSON list of task objects")
    return data


# Statistics ---------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q% of the values at or below it.
    None for no values; q=0 is the minimum, q=100 the maximum."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be from 0 to 100")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_stats(values: Sequence[float]) -> dict[str, Any]:
    """count, mean, p50, p90, p99, max (same unit as the values; None when there are none)."""
    ordered = sorted(values)
    count = len(ordered)
    if not count:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}

    def rank(q: float) -> float:
        return ordered[max(1, math.ceil(q / 100 * count)) - 1]

    return {"count": count, "mean": sum(ordered) / count, "p50": rank(50), "p90": rank(90),
            "p99": rank(99), "max": ordered[-1]}


# Run records --------------------------------------------------------------------------------------

@dataclass(slots=True)
class TaskOutcome:
    """One task of the run. Times are seconds since the run started (client clock); server_ms is
    finished_at - submitted_at from the final record (the server's own view), when it has both."""

    index: int
    type: str
    complexity: int
    outcome: str = "pending"  # succeeded | failed | rejected | lost | timeout | unsubmitted
    task_id: str | None = None
    request: int | None = None  # index of the submission request that carried it
    submit_start: float | None = None
    submit_end: float | None = None
    cache: str | None = None  # hit | coalesced | miss | bypass | existing | None (not reported)
    submit_status: str | None = None
    result_at: float | None = None
    worker_id: str | None = None
    server_ms: float | None = None
    server_submitted_at: float | None = None  # epoch ms, from the final record
    server_finished_at: float | None = None
    polls: int = 0
    error: str | None = None
    result_url: str | None = None
    # Index of the run's first task with the same task_id, or else the same work (type and
    # payload): the tasks that one computation of this run could answer.
    same_as: int | None = None

    @property
    def latency(self) -> float | None:
        """Submit-to-result, seconds: from the first submission attempt to the final record in hand."""
        if self.result_at is None or self.submit_start is None:
            return None
        return self.result_at - self.submit_start


@dataclass(slots=True)
class RequestSample:
    """One submission request (with its retries): start and latency in seconds."""

    index: int
    size: int
    start: float
    latency: float | None = None
    http_status: int | None = None
    attempts: int = 0


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


@dataclass
class LoadReport:
    config: dict[str, Any]
    started_at: float  # epoch seconds
    elapsed: float
    tasks: list[TaskOutcome]
    requests: list[RequestSample]
    counters: dict[str, int] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)  # optional extras (stats, workers)

    def summary(self) -> dict[str, Any]:
        return summarize(self)

    @property
    def ok(self) -> bool:
        """Every task ended (succeeded or failed) by the deadline."""
        return all(task.outcome in ENDED for task in self.tasks)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "started_at": self.started_at,
            "elapsed_s": self.elapsed,
            "summary": self.summary(),
            "counters": self.counters,
            "server": self.server,
            "requests": [asdict(r) for r in self.requests],
            "tasks": [asdict(t) for t in self.tasks],
        }


# The engine ---------------------------------------------------------------------------------------

ProgressCallback = Callable[[Progress], None]


def _base(url: str | None) -> str | None:
    return None if url is None else url.rstrip("/") + "/"


class _Run:
    def __init__(self, tasks: Sequence[dict[str, Any]], producer_url: str, results_url: str | None,
                 concurrency: int, batch: int, rate: float | None, deadline: float,
                 poll_concurrency: int, poll_wait: float, request_timeout: float, poll_batch: int,
                 signer: Signer | None = None, sign_submissions: bool = False) -> None:
        self.tasks = tasks
        self.produce_url = _base(producer_url) + "produce"  # type: ignore[operator]
        self.results_base = _base(results_url)
        self.concurrency, self.batch, self.rate = concurrency, batch, rate
        self.poll_concurrency, self.poll_wait, self.poll_batch = poll_concurrency, poll_wait, poll_batch
        self.signer, self.sign_submissions = signer, sign_submissions
        self.request_timeout = request_timeout
        self.t0 = time.monotonic()
        self.end = self.t0 + deadline
        firsts: dict[str, int] = {}
        self.outcomes = [TaskOutcome(i, str(t.get("type")), _int(t.get("complexity", 1)),
                                     same_as=firsts.setdefault(_same_key(t), i))
                         for i, t in enumerate(tasks)]
        self.requests: list[RequestSample] = []
        self.counters: Counter[str] = Counter()
        self.not_found: Counter[int] = Counter()  # 404 answers, by task index
        # Failed requests that were retried, by kind: "submit: HTTP 503 unavailable", "poll: TimeoutError".
        self.errors: Counter[str] = Counter()
        self.progress = Progress(len(tasks))
        self.unresolved = len(tasks)
        self.all_resolved = asyncio.Event()
        # Tasks to fetch. The quick lane: tasks that are probably final already (final when submitted,
        # like a cache hit, or the same work as a task just seen final, like a coalesced duplicate),
        # fetched with a plain GET by fetchers of their own so that they never wait for a long-poll
        # slot. The long-poll lane: every other task, oldest first by its place in line; a task whose
        # wait ran out gets a new place at the back, one that was not final in the quick lane goes
        # back to the place it had.
        self.fetchers = max(1, poll_concurrency // 4)
        self.long_pollers = max(1, poll_concurrency - self.fetchers)
        self.quick: asyncio.Queue[int] = asyncio.Queue()
        self.line: asyncio.PriorityQueue[tuple[int, int]] = asyncio.PriorityQueue()
        self.place: dict[int, int] = {}
        self.in_line: set[int] = set()
        self.places = itertools.count()
        self.same_work: dict[str, list[int]] = {}  # work key -> indexes of tasks not seen final yet
        if not tasks:
            self.all_resolved.set()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def signed_get(self, url: str, params: dict[str, str]) -> tuple[yarl.URL, dict[str, str]]:
        """The URL as sent (encoded once, here, so the signature covers exactly it) and the
        headers: signed when there is a signer (the supervisor's URL is AWS_IAM)."""
        full = f"{url}?{urllib.parse.urlencode(params)}" if params else url
        headers = self.signer.headers("GET", full) if self.signer else {}
        return yarl.URL(full, encoded=True), headers

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
                headers = (self.signer.headers("POST", self.produce_url, body, JSON_HEADERS)
                           if self.signer and self.sign_submissions else JSON_HEADERS)
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
            self.errors["submit: " + _kind(status, raw, error_name)] += 1
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
            self.same_work.setdefault(self.work_key(i), []).append(i)
            if task.submit_status in FINAL_STATUSES:
                self.quick.put_nowait(i)
            else:
                self.to_line(i)

    # Results --------------------------------------------------------------------------------------

    def work_key(self, index: int) -> str:
        task = self.tasks[index]
        return json.dumps([task.get("type"), task.get("payload")], sort_keys=True, default=str)

    def to_line(self, index: int, back: bool = False) -> None:
        """Into the long-poll lane: at its old place, or a new one at the back."""
        if index in self.in_line:
            return  # already waiting there (it was also put in the quick lane)
        if back or index not in self.place:
            self.place[index] = next(self.places)
        self.in_line.add(index)
        self.line.put_nowait((self.place[index], index))

    def retry(self, index: int, quick: bool, delay: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self.quick.put_nowait if quick else self.to_line, index)

    def seen_final(self, index: int) -> None:
        """Tasks of the same work (type and payload) as a task just seen final were probably
        coalesced with it or answered from its cached result: fetch them now rather than in line."""
        for other in self.same_work.pop(self.work_key(index), []):
            if other != index and self.outcomes[other].outcome == "pending":
                self.counters["quick_same_work"] += 1
                self.quick.put_nowait(other)

    async def take(self, quick: bool) -> list[int]:
        """The next pending tasks of a lane, up to poll_batch: waits for the first, then takes what
        else is already there."""
        taken: list[int] = []
        while not taken:
            if quick:
                taken.append(await self.quick.get())
            else:
                taken.append((await self.line.get())[1])
            while len(taken) < self.poll_batch and not (self.quick if quick else self.line).empty():
                taken.append(self.quick.get_nowait() if quick else self.line.get_nowait()[1])
            if not quick:
                self.in_line.difference_update(taken)
            taken = [i for i in dict.fromkeys(taken) if self.outcomes[i].outcome == "pending"]
        return taken

    async def poller(self, session: aiohttp.ClientSession, quick: bool) -> None:
        """Fetches results: one GET per task, or with poll_batch > 1 one GET {results}results?ids=...
        for up to poll_batch tasks, which answers once all of them are final or the wait is over."""
        while True:
            indexes = await self.take(quick)
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
                target, headers = self.signed_get(url, params)
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
                self.poll_failed(indexes, quick, "poll: " + _kind(status, raw))
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
                    self.to_line(index, back=not quick)  # a long-poll ran out: to the back of the line
            # Short waits (--poll-wait 0, the deadline near) must not turn into a busy loop.
            pause = MIN_POLL_INTERVAL - (time.monotonic() - asked)
            if unfinished and not quick and pause > 0:
                await asyncio.sleep(pause)

    def poll_failed(self, indexes: list[int], quick: bool, kind: str) -> None:
        self.counters["poll_errors"] += 1
        self.errors[kind] += 1
        for index in indexes:
            self.retry(index, quick, 0.2 + random.random() * 0.3)

    def not_found_again(self, index: int, quick: bool, raw: bytes) -> None:
        self.counters["poll_not_found"] += 1
        self.not_found[index] += 1
        if self.not_found[index] >= NOT_FOUND_LIMIT:
            self.resolve(index, "lost", f"GET results: 404 {raw[:200].decode(errors='replace')}")
        else:
            self.retry(index, quick, 0.25)

    def settle(self, index: int, record: dict[str, Any]) -> None:
        task = self.outcomes[index]
        task.result_at = self.now()
        task.worker_id = record.get("worker_id")
        finished, submitted = record.get("finished_at"), record.get("submitted_at")
        if isinstance(finished, int | float) and isinstance(submitted, int | float):
            task.server_ms = float(finished - submitted)
            task.server_submitted_at, task.server_finished_at = float(submitted), float(finished)
        error = record.get("error")
        self.resolve(index, record["status"], error if isinstance(error, str) else None)
        self.seen_final(index)

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
                headers = (self.signer.headers("POST", self.produce_url, body, JSON_HEADERS)
                           if self.signer and self.sign_submissions else JSON_HEADERS)
                async with submit_session.post(self.produce_url, data=body, headers=headers) as response:
                    await response.read()

        async def get() -> None:
            if self.results_base is None:
                return
            url = f"{self.results_base}results/warmup-{random.getrandbits(64):x}"
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                timeout = aiohttp.ClientTimeout(total=self.request_timeout)
                target, headers = self.signed_get(url, {"wait": "0"})
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


def _kind(status: int | None, raw: bytes, error_name: str = "") -> str:
    """A short name for a failed request: the exception's class, or the status and error code."""
    if status is None:
        return error_name or "transport error"
    code = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        error = json.loads(raw).get("error")
        code = error.get("code", "") if isinstance(error, dict) else str(error or "")
    return f"HTTP {status}{' ' + code if code else ''}"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _same_key(task: dict[str, Any]) -> str:
    task_id = task.get("task_id")
    if isinstance(task_id, str):
        return "id " + task_id
    return json.dumps([task.get("type"), task.get("payload")], sort_keys=True, default=str)


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


# Summary ------------------------------------------------------------------------------------------

def _ms(values: Sequence[float]) -> dict[str, Any]:
    stats = latency_stats([v * 1000 for v in values])
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()}


def worker_label(task: TaskOutcome) -> str:
    if task.worker_id:
        return task.worker_id
    if task.cache == "hit":
        return "(cache hit: no worker)"
    return "(none reported)"


def timeline(tasks: Sequence[TaskOutcome], bucket: float = 1.0,
             started_at: float | None = None) -> dict[str, Any]:
    """Per `bucket` seconds since the start: tasks submitted (accepted), completed (result in the
    client's hand) and, given the run's epoch start and records with finished_at, finished on the
    server (the worker's end of the task; empty otherwise)."""
    ends = [t.result_at for t in tasks if t.result_at is not None]
    sent = [t.submit_end for t in tasks if t.submit_end is not None]
    done = ([max(0.0, t.server_finished_at / 1000 - started_at) for t in tasks
             if t.server_finished_at is not None] if started_at is not None else [])
    last = max([*ends, *sent, *done], default=0.0)
    slots = int(last // bucket) + 1 if (ends or sent or done) else 0
    series: dict[str, list[int]] = {}
    for name, values in (("submitted", sent), ("completed", ends), ("finished_on_server", done)):
        counts = [0] * slots
        for value in values:
            counts[int(value // bucket)] += 1
        series[name] = counts if values else []
    return {"bucket_s": bucket, **series}


# Cache outcomes of a task that did no work of its own.
NO_WORK = ("hit", "coalesced", "existing")


def done_before(accepted: Sequence[TaskOutcome]) -> dict[str, int]:
    """How many accepted tasks were answered by work from before the run (by cache outcome, and
    "total"): those of a same_as group in which no task was computed (a miss, a bypass, or an
    outcome the system does not report). Within a group the order of admission does not matter:
    one computation in the run accounts for its repeats."""
    def group(task: TaskOutcome) -> int:
        return task.index if task.same_as is None else task.same_as

    computed = {group(t) for t in accepted if t.cache not in NO_WORK}
    before = Counter(t.cache for t in accepted if group(t) not in computed)
    return {"total": sum(before.values()), **{name: before.get(name, 0) for name in NO_WORK}}


def reuse_warning(summary: dict[str, Any]) -> str | None:
    """A plain warning when most of the run was answered by work from before it, so that its
    figures measure lookups, not processing."""
    before, submitted = summary["done_before"], summary["submitted"]
    if not submitted or before["total"] * 2 <= submitted:
        return None
    return (f"WARNING: {before['total']:,} of {submitted:,} tasks were answered by work from before "
            f"this run (cache hit {before['hit']:,},\n  coalesced {before['coalesced']:,}, existing id "
            f"{before['existing']:,}): the figures above measure lookups, not processing. To measure\n"
            "  processing, run with --no-cache (make load-test ARGS=--no-cache) or a --seed not used before.")


def summarize(report: LoadReport) -> dict[str, Any]:
    tasks = report.tasks
    outcomes = Counter(t.outcome for t in tasks)
    accepted = [t for t in tasks if t.submit_end is not None]
    final = [t for t in tasks if t.outcome in ENDED and t.result_at is not None]
    starts = [t.submit_start for t in tasks if t.submit_start is not None]
    first = min(starts, default=0.0)
    submit_window = max((t.submit_end for t in accepted), default=first) - first  # type: ignore[type-var]
    complete_window = max((t.result_at for t in final), default=first) - first  # type: ignore[type-var]
    failed = [t for t in tasks if t.outcome == "failed"]
    expected = sum(1 for t in failed if t.type == EXPECTED_FAILURE_TYPE)
    cache = Counter(t.cache or "(not reported)" for t in accepted)
    by_cache = {name: _ms([t.latency for t in final if t.cache == name])  # type: ignore[misc]
                for name in [*CACHE_OUTCOMES, *sorted(set(cache) - set(CACHE_OUTCOMES))] if cache.get(name)}
    problems = [{"index": t.index, "task_id": t.task_id, "type": t.type, "outcome": t.outcome,
                 "error": t.error}
                for t in tasks if t.outcome in NOT_ENDED
                or (t.outcome == "failed" and t.type != EXPECTED_FAILURE_TYPE)][:20]
    request_latencies = [r.latency for r in report.requests if r.latency is not None]
    # The server's own view: from the first admission to the last task finishing (its clock), which
    # does not include the time the client took to collect the results.
    served = [t for t in final if t.server_submitted_at is not None and t.server_finished_at is not None]
    server_window = ((max(t.server_finished_at for t in served) - min(t.server_submitted_at for t in served))
                     / 1000 if served else 0.0)  # type: ignore[type-var, operator]
    return {
        "tasks": len(tasks),
        "elapsed_s": round(report.elapsed, 3),
        "submitted": len(accepted),
        "completed": len(final),
        "throughput": {
            "submitted_per_s": round(len(accepted) / submit_window, 2) if submit_window > 0 else None,
            "completed_per_s": round(len(final) / complete_window, 2) if complete_window > 0 else None,
            "submit_window_s": round(submit_window, 3),
            "complete_window_s": round(complete_window, 3),
            "server_completed_per_s": round(len(served) / server_window, 2) if server_window > 0 else None,
            "server_window_s": round(server_window, 3) if served else None,
            "server_completed": len(served),
        },
        "latency_ms": {
            "submission": _ms(request_latencies),
            "submit_to_result": _ms([t.latency for t in final]),  # type: ignore[misc]
            "server_submit_to_finish": _ms([t.server_ms / 1000 for t in final if t.server_ms is not None]),
            # From the record's finished_at (the worker's end of the task) to the client holding the
            # result, on the same host's clock: the system's result path (results queue, result
            # handler, store, wake-up, HTTP) plus any wait for a poll slot on the client's side.
            "finish_to_pickup": _ms([max(0.0, report.started_at + t.result_at - t.server_finished_at / 1000)
                               for t in served]),  # type: ignore[operator]
        },
        "submit_to_result_by_cache_ms": by_cache,
        "status": {name: outcomes.get(name, 0) for name in (*ENDED, *NOT_ENDED)},
        "failed": {"total": len(failed), "expected_type_fail": expected,
                   "unexpected": len(failed) - expected},
        "cache": {**{name: cache.get(name, 0) for name in CACHE_OUTCOMES},
                  **{k: v for k, v in cache.items() if k not in CACHE_OUTCOMES}},
        "done_before": done_before(accepted),
        "workers": dict(sorted(Counter(worker_label(t) for t in final).items())),
        "not_ended": sum(outcomes.get(name, 0) for name in NOT_ENDED),
        "problems": problems,
        "requests": {"submissions": len(report.requests),
                     "submit_retries": report.counters.get("submit_retries", 0),
                     "polls": report.counters.get("polls", 0),
                     "poll_errors": report.counters.get("poll_errors", 0),
                     "poll_not_found": report.counters.get("poll_not_found", 0),
                     "quick_same_work": report.counters.get("quick_same_work", 0),
                     "max_schedule_lag_ms": report.counters.get("max_schedule_lag_ms", 0),
                     "errors": {k[len("error "):]: v for k, v in report.counters.items()
                                if k.startswith("error ")}},
        "timeline": timeline(tasks, started_at=report.started_at),
        "ok": all(t.outcome in ENDED for t in tasks),
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def format_summary(report: LoadReport, summary: dict[str, Any] | None = None) -> str:
    """The human-readable summary table."""
    s = summary or summarize(report)
    c = report.config
    rate = f"{c['rate']:g} tasks/s" if c.get("rate") else "as fast as possible"
    source = c.get("source", "")
    lines = [
        f"load test: {s['tasks']:,} tasks{f' ({source})' if source else ''}; batch {c['batch']}, "
        f"concurrency {c['concurrency']} (polls {c['poll_concurrency']}), {rate}, "
        f"deadline {c['deadline_s']:g} s{', after a warm-up' if c.get('warmup') else ''}",
        f"  producer {c['producer']}   results {c['results'] or '(result_url of each reply)'}",
        "",
        f"{'throughput':<28}{'tasks':>9}{'window s':>11}{'tasks/s':>11}",
        f"{'  submitted':<28}{s['submitted']:>9,}{_fmt(s['throughput']['submit_window_s'], 2):>11}"
        f"{_fmt(s['throughput']['submitted_per_s']):>11}",
        f"{'  completed (result in hand)':<28}{s['completed']:>9,}"
        f"{_fmt(s['throughput']['complete_window_s'], 2):>11}{_fmt(s['throughput']['completed_per_s']):>11}",
    ]
    if s["throughput"]["server_window_s"] is not None:
        lines.append(f"{'  server: admitted-to-finish':<28}"
                     f"{s['throughput']['server_completed']:>9,}"
                     f"{_fmt(s['throughput']['server_window_s'], 2):>11}"
                     f"{_fmt(s['throughput']['server_completed_per_s']):>11}")
    lines += [
        "",
        f"{'latency (ms)':<28}{'count':>9}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}",
    ]
    rows = [("  submission (per request)", s["latency_ms"]["submission"]),
            ("  submit-to-result", s["latency_ms"]["submit_to_result"]),
            ("  server: admitted-to-finish", s["latency_ms"]["server_submit_to_finish"]),
            ("  finish-to-pickup", s["latency_ms"]["finish_to_pickup"])]
    rows += [(f"  submit-to-result, {name}", stats)
             for name, stats in s["submit_to_result_by_cache_ms"].items()]
    for label, stats in rows:
        if stats["count"]:
            lines.append(f"{label:<28}{stats['count']:>9,}" + "".join(
                f"{_fmt(stats[k]):>10}" for k in ("p50", "p90", "p99", "max")))
    status, failed = s["status"], s["failed"]
    lines += [
        "",
        "status      " + "  ".join(f"{name} {status[name]:,}" for name in ENDED)
        + f"   (failed: {failed['expected_type_fail']:,} of type fail, expected; "
          f"{failed['unexpected']:,} unexpected)",
        "not ended   " + "  ".join(f"{name} {status[name]:,}" for name in NOT_ENDED),
        "cache       " + "  ".join(f"{name} {count:,}" for name, count in s["cache"].items()),
        "per worker  " + ("  ".join(f"{name} {count:,}" for name, count in s["workers"].items()) or "-"),
        f"requests    {s['requests']['submissions']:,} submissions "
        f"({s['requests']['submit_retries']:,} retries),"
        f" {s['requests']['polls']:,} polls ({s['requests']['poll_errors']:,} errors,"
        f" {s['requests']['poll_not_found']:,} not found)"
        + (f", max lag behind the rate {s['requests']['max_schedule_lag_ms']:,} ms" if c.get("rate") else ""),
    ]
    if s["requests"]["errors"]:
        lines.append("retried     " + "  ".join(f"{kind} x{count:,}"
                                                for kind, count in s["requests"]["errors"].items()))
    for problem in s["problems"][:10]:
        lines.append(f"  ! task {problem['index']} ({problem['type']}, id {problem['task_id']}): "
                     f"{problem['outcome']}: {(problem['error'] or '')[:120]}")
    lines.append("")
    warning = reuse_warning(s)
    if warning:
        lines += [warning, ""]
    before = s["done_before"]["total"]
    if s["ok"]:
        lines.append(f"OK: all {s['tasks']:,} tasks ended in {s['elapsed_s']:.1f} s"
                     + (f" ({before:,} answered by work from before this run)" if before else ""))
    else:
        lines.append(f"FAILED: {s['not_ended']:,} of {s['tasks']:,} tasks lost or not ended by the deadline")
    return "\n".join(lines)

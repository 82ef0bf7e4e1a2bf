"""The benchmark's load generator (issue 11): N client threads, each with its own keep-alive
connections, speaking the task contract (bench/contract.py) to any system: ours or a peer's front.

Each client is a client of the original API: it takes the next request from a shared list (one task,
or a batch), POSTs it, then reads back the results of its tasks before it takes the next one -
one id per request (`GET /results/{id}?wait=S`, reads="one") or up to `ids_per_read` per request
(`GET /results?ids=A,B,...&wait=S`, reads="ids"; a client then submits until it holds that many
tasks, so that one task per request still reads 100 per request). A read whose wait ran out asks
again. So at most
N requests are in flight, and a task's latency runs from its POST to the read that brought its final
record. When no request is left to submit, a client that has read all of its own results reads
those another client has not come to yet (from the far end of its list), so that the last batches
are not read by one thread each while the others idle.

Figures come as bench/stats.py's LoadReport (the same summary as bench/driver.py's).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench.contract import FINAL_STATUSES, JSON_HEADERS, RETRY_STATUSES, base_url, failure_kind
from bench.stats import LoadReport, RequestSample, TaskOutcome
from taskcore.signing import Signer

MAX_WAIT = 20.0  # seconds: the longest ?wait= the contract allows
NOT_FOUND_LIMIT = 3  # a task answered 404 this many times is lost (it was accepted: it must exist)
READS = ("one", "ids")


@dataclass(frozen=True)
class Target:
    producer: str  # base URL: POST {producer}produce
    results: str  # base URL: GET {results}results/{id}, GET {results}results?ids=
    signer: Signer | None = None  # signs the reads (our supervisor's URL is AWS_IAM)


class _Connections:
    """One keep-alive connection per host:port, for one client thread (http.client reconnects by
    itself after the server closed an idle one; a failed exchange drops the connection)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.open: dict[str, http.client.HTTPConnection] = {}

    def exchange(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                 ) -> tuple[int, bytes]:
        parts = urlsplit(url)
        connection = self.open.get(parts.netloc)
        if connection is None:
            connection = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
            self.open[parts.netloc] = connection
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except BaseException:
            connection.close()
            del self.open[parts.netloc]
            raise

    def close(self) -> None:
        for connection in self.open.values():
            connection.close()


class _Run:
    def __init__(self, tasks: Sequence[dict[str, Any]], target: Target, clients: int, batch: int,
                 reads: str, ids_per_read: int, wait: float, deadline: float, timeout: float) -> None:
        self.tasks, self.target, self.batch = tasks, target, batch
        self.reads, self.ids_per_read, self.wait, self.timeout = reads, ids_per_read, wait, timeout
        self.produce_url = f"{base_url(target.producer)}produce"
        self.results_base = base_url(target.results)
        self.outcomes = [TaskOutcome(i, str(t.get("type")), int(t.get("complexity", 1)))
                         for i, t in enumerate(tasks)]
        self.requests: list[RequestSample] = []
        self.counters: Counter[str] = Counter()
        self.not_found: Counter[int] = Counter()
        self.lock = threading.Condition()
        self.pending = deque(range(0, len(tasks), batch))  # first task index of each request left
        self.lines: list[deque[int]] = [deque() for _ in range(clients)]  # each client's tasks to read
        self.unresolved = len(tasks)
        self.t0 = time.monotonic()
        self.end = self.t0 + deadline

    def now(self) -> float:
        return time.monotonic() - self.t0

    # Work for a client --------------------------------------------------------------------------

    def next_job(self, me: int) -> tuple[str, list[int]] | None:
        """("read", task indexes) of the client's own line once it holds a read's worth (or nothing
        is left to submit); else ("submit", indexes) of the next request; else the newest of the
        longest other line; None when all is done. With one id per read that is submit, read,
        submit...; with 100 per read and one task per request, 100 submissions, then one read."""
        take = 1 if self.reads == "one" else self.ids_per_read
        with self.lock:
            while True:
                if self.unresolved == 0 or time.monotonic() >= self.end:
                    return None
                own = self.lines[me]
                if own and (len(own) >= take or not self.pending):
                    return "read", [own.popleft() for _ in range(min(take, len(own)))]
                if self.pending:
                    first = self.pending.popleft()
                    return "submit", list(range(first, min(first + self.batch, len(self.tasks))))
                other = max(self.lines, key=len)
                if other:
                    return "read", [other.pop() for _ in range(min(take, len(other)))][::-1]
                self.lock.wait(0.05)  # others' reads in flight may come back unfinished

    def to_line(self, me: int, indexes: Sequence[int], front: bool = False) -> None:
        with self.lock:
            if front:
                self.lines[me].extendleft(reversed(indexes))
            else:
                self.lines[me].extend(indexes)
            self.lock.notify_all()

    def resolve(self, index: int, outcome: str, error: str | None = None) -> None:
        with self.lock:
            task = self.outcomes[index]
            if task.outcome != "pending":
                return
            task.outcome, task.error = outcome, error
            self.unresolved -= 1
            self.lock.notify_all()

    # One client ---------------------------------------------------------------------------------

    def client(self, me: int) -> None:
        connections = _Connections(self.timeout + MAX_WAIT)
        try:
            while (job := self.next_job(me)) is not None:
                kind, indexes = job
                if kind == "submit":
                    self.submit(me, connections, indexes)
                else:
                    self.read(me, connections, indexes)
        finally:
            connections.close()

    def submit(self, me: int, connections: _Connections, indexes: list[int]) -> None:
        if self.batch == 1:
            body = json.dumps(self.tasks[indexes[0]]).encode()
        else:
            body = json.dumps({"tasks": [self.tasks[i] for i in indexes]}).encode()
        sample = RequestSample(indexes[0] // self.batch, len(indexes), self.now())
        with self.lock:
            self.requests.append(sample)
        for i in indexes:
            self.outcomes[i].submit_start = sample.start
        while True:
            sample.attempts += 1
            try:
                status, raw = connections.exchange("POST", self.produce_url, body, dict(JSON_HEADERS))
                reason = f"HTTP {status}: {raw[:300].decode(errors='replace')}"
            except (OSError, http.client.HTTPException) as error:
                status, raw, reason = None, b"", f"{type(error).__name__}: {error}"
            if status in (200, 202):
                sample.http_status, sample.latency = status, self.now() - sample.start
                self.accept(me, indexes, raw)
                return
            if status is not None and status not in RETRY_STATUSES:
                sample.http_status, sample.latency = status, self.now() - sample.start
                for i in indexes:
                    self.resolve(i, "rejected", reason)
                return
            self.count(f"error submit: {failure_kind(status, raw, reason.partition(':')[0])}")
            self.count("submit_retries")
            if time.monotonic() + 0.1 >= self.end:
                for i in indexes:
                    self.resolve(i, "unsubmitted", f"deadline passed while retrying ({reason})")
                return
            time.sleep(min(1.0, 0.05 * 2 ** min(sample.attempts, 5)))

    def accept(self, me: int, indexes: list[int], raw: bytes) -> None:
        try:
            reply = json.loads(raw)
            items = reply["tasks"] if self.batch != 1 else [reply]
            ids = [item["task_id"] for item in items]
            if len(ids) != len(indexes) or not all(isinstance(i, str) and i for i in ids):
                raise ValueError(f"expected {len(indexes)} task ids")
        except (ValueError, TypeError, KeyError) as error:
            for i in indexes:
                self.resolve(i, "lost", f"unreadable submission reply: {error!r}")
            return
        now = self.now()
        for i, item, task_id in zip(indexes, items, ids, strict=True):
            task = self.outcomes[i]
            task.submit_end, task.task_id = now, task_id
            task.submit_status = item.get("status")
            task.cache = "existing" if item.get("existing") else item.get("cache")
        self.to_line(me, indexes)

    def read(self, me: int, connections: _Connections, indexes: list[int]) -> None:
        tasks = [self.outcomes[i] for i in indexes]
        wait = max(0.0, min(self.wait, self.end - time.monotonic() - 0.5))
        if self.reads == "one":
            url = f"{self.results_base}results/{tasks[0].task_id}?{urlencode({'wait': f'{wait:.2f}'})}"
        else:
            query = urlencode({"ids": ",".join(str(t.task_id) for t in tasks), "wait": f"{wait:.2f}"})
            url = f"{self.results_base}results?{query}"
        headers = self.target.signer.headers("GET", url) if self.target.signer else {}
        for task in tasks:
            task.polls += 1
        self.count("polls")
        try:
            status, raw = connections.exchange("GET", url, None, headers)
        except (OSError, http.client.HTTPException) as error:
            self.read_failed(me, indexes, type(error).__name__)
            return
        reply: Any = None
        if status in (200, 404):
            try:
                reply = json.loads(raw)
            except ValueError:
                reply = None
        if self.reads == "one" and status == 404:
            records, missing = {}, {tasks[0].task_id}
        elif self.reads == "one" and status == 200 and isinstance(reply, dict):
            records, missing = {tasks[0].task_id: reply}, set()
        elif status == 200 and isinstance(reply, dict):
            records = {r.get("task_id"): r for r in reply.get("results", []) if isinstance(r, dict)}
            missing = set(reply.get("not_found") or [])
        else:
            self.read_failed(me, indexes, failure_kind(status, raw))
            return
        now, again = self.now(), []
        for index, task in zip(indexes, tasks, strict=True):
            record = records.get(task.task_id)
            if task.task_id in missing:
                self.count("poll_not_found")
                self.not_found[index] += 1
                if self.not_found[index] >= NOT_FOUND_LIMIT:
                    self.resolve(index, "lost", f"GET results: 404 {raw[:200].decode(errors='replace')}")
                else:
                    again.append(index)
            elif record is not None and record.get("status") in FINAL_STATUSES:
                task.result_at, task.worker_id = now, record.get("worker_id")
                error = record.get("error")
                self.resolve(index, record["status"], error if isinstance(error, str) else None)
            else:
                again.append(index)  # not final when the wait ran out: ask again first
        if again:
            if missing:
                time.sleep(0.25)  # a 404 for an accepted task: the store may be catching up
            self.to_line(me, again, front=True)

    def read_failed(self, me: int, indexes: list[int], kind: str) -> None:
        self.count("poll_errors")
        self.count(f"error poll: {kind}")
        time.sleep(0.2)
        self.to_line(me, indexes, front=True)

    def count(self, name: str) -> None:
        with self.lock:
            self.counters[name] += 1

    def finish(self) -> None:
        for task in self.outcomes:
            if task.outcome == "pending":
                sent = task.task_id is not None
                task.outcome = "timeout" if sent else "unsubmitted"
                task.error = "no result by the deadline" if sent else "not submitted by the deadline"


def run_load(tasks: Sequence[dict[str, Any]], target: Target, *, clients: int = 24, batch: int = 1,
             reads: str = "one", ids_per_read: int = 100, wait: float = MAX_WAIT, deadline: float = 600.0,
             timeout: float = 30.0) -> LoadReport:
    """Submits `tasks` (`batch` per request) from `clients` threads and reads every result back
    (`reads`: "one" id per request or "ids", up to `ids_per_read` per request), waiting up to `wait`
    seconds per read; stops at `deadline` seconds. `timeout`: seconds a request may take beyond
    its wait."""
    if clients < 1 or batch < 1 or ids_per_read < 1:
        raise ValueError("clients, batch and ids_per_read must be at least 1")
    if reads not in READS:
        raise ValueError(f"reads must be one of {READS}")
    if not 0 <= wait <= MAX_WAIT:
        raise ValueError(f"wait must be from 0 to {MAX_WAIT:g} s")
    run = _Run(tasks, target, clients, batch, reads, ids_per_read, wait, deadline, timeout)
    started = time.time()
    threads = [threading.Thread(target=run.client, args=(n,), name=f"client-{n}", daemon=True)
               for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.finish()
    config = {"tasks": len(tasks), "producer": target.producer, "results": target.results,
              "clients": clients, "batch": batch, "reads": reads,
              "ids_per_read": ids_per_read if reads == "ids" else 1, "wait_s": wait, "deadline_s": deadline}
    return LoadReport(config=config, started_at=started, elapsed=run.now(), tasks=run.outcomes,
                      requests=run.requests, counters=dict(run.counters))

"""One worker process: consumes its own queue and the shared one, runs tasks in a thread pool,
publishes each outcome with a broker confirm and only then acks the task message.

Threads: the main thread owns the pika connection (pika is not thread-safe) and keeps calling
process_data_events, so broker heartbeats flow however long a task runs; tasks run in a pool and hand
their outcome back with add_callback_threadsafe. Redis is only used from pool threads and the heartbeat
thread, so a slow Redis never stalls the connection.

Delivery guarantees: a task message is acked only after its result (or its retry) was confirmed by the
broker. If the worker dies or loses its connection first, the broker requeues the message; a task that
is already final when it comes back is acked without running (mark_running answers "final").
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from taskcore import broker
from taskcore.backoff import RECONNECT, REPUBLISH
from taskcore.broker import ConfirmingChannel
from taskcore.keys import Keys
from taskcore.messages import MessageError
from taskcore.settings import Settings
from taskcore.store import TaskStore, now_ms
from worker_fleet import retries
from worker_fleet.execution import Outcome, run_attempt
from worker_fleet.heartbeat import Heartbeat, Tally
from worker_fleet.jobs import Job, parse_task
from worker_fleet.logs import log
from worker_fleet.outcomes import Publication, publication_for, publish_all

# Longest the connection thread blocks at once: the stop flag is seen at least this often.
POLL_SECONDS = 0.25
DEFAULT_GRACE_SECONDS = 30.0
# Connection-level failures that mean "reconnect" (socket errors surface as OSError in places).
CONNECTION_ERRORS = (pika.exceptions.AMQPError, OSError)


class Worker:
    def __init__(self, settings: Settings, worker_id: str, concurrency: int,
                 grace: float = DEFAULT_GRACE_SECONDS) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.grace = grace
        self.keys = Keys(settings.namespace)
        self.store = TaskStore(settings)
        # Twice the slots: a thread that outlives its time limit (until its computation notices the
        # cancel) must not keep the next task from starting.
        self._pool = ThreadPoolExecutor(max_workers=2 * concurrency, thread_name_prefix=f"task-{worker_id}")
        self._stopping = threading.Event()
        self._backoff = RECONNECT.streak()
        self._generation = 0
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._confirming: ConfirmingChannel | None = None
        self._outbox: list[Job] = []  # settled jobs whose publication is not yet sent
        self._consumers: list[str] = []
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[int, Job] = {}  # by delivery tag: started and not yet acked
        self._draining = False
        self._redeclare = False
        self._started_at = now_ms()
        self._processed = Tally()  # attempts ended, for the heartbeat's `processed`

    # Lifecycle ----------------------------------------------------------------------------------

    def stop(self, *_args: object) -> None:
        """Signal-safe: only sets a flag that the connection thread polls."""
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self) -> None:
        """Runs until stop(): connects, consumes, reconnects with backoff when the broker goes away,
        and on stop finishes the tasks in hand within the grace period."""
        heartbeat = Heartbeat(self.settings, self.worker_id, self.info, self._processed)
        heartbeat.start()
        log("worker_started", worker_id=self.worker_id, pid=os.getpid(), concurrency=self.concurrency)
        try:
            while not self._stopping.is_set():
                try:
                    self._session()
                except CONNECTION_ERRORS as error:
                    self._abandon(error)
                    if self._stopping.is_set():
                        break
                    delay = self._backoff.next()
                    log("reconnecting", worker_id=self.worker_id, in_seconds=round(delay, 2))
                    self._stopping.wait(delay)
        finally:
            heartbeat.stop()
            self._pool.shutdown(wait=False, cancel_futures=True)
        log("worker_stopped", worker_id=self.worker_id, pid=os.getpid())

    def info(self) -> dict[str, Any]:
        """The heartbeat's self-report (read from the heartbeat thread; len() is atomic)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": self._started_at,
                "concurrency": self.concurrency, "in_flight": len(self._running) + len(self._waiting)}

    # One connection -----------------------------------------------------------------------------

    def _session(self) -> None:
        params = broker.connection_parameters(self.settings.rabbitmq_url, self.settings.broker_timeout)
        # Shown by rabbitmqctl/the management UI; the namespace tells apart stacks sharing a broker.
        params.client_properties = {"connection_name": f"worker {self.keys.prefix}{self.worker_id}"}
        connection = pika.BlockingConnection(params)
        self._connection = connection
        channel = connection.channel()
        self._channel = channel
        self._declare(channel)
        # Results and retries go out on a second channel in confirm mode that confirms a whole batch in
        # one round trip (one confirm per message would cap a worker at a few hundred tasks/s).
        self._confirming = ConfirmingChannel(connection)
        self._outbox = []
        self._generation += 1
        self._draining = False
        # Per consumer (quorum queues do not support a channel-wide prefetch), set before each
        # basic_consume; deliveries beyond the free slots wait in _waiting, not in a thread.
        self._consumers = []
        own = self.concurrency * self.settings.prefetch_multiplier
        for queue, prefetch in ((self.keys.worker_queue(self.worker_id), own),
                                (self.keys.shared_queue, self.concurrency)):
            channel.basic_qos(prefetch_count=prefetch)
            self._consumers.append(channel.basic_consume(queue, self._on_message))
        log("connected", worker_id=self.worker_id, pid=os.getpid())
        self._backoff.reset()
        while not self._stopping.is_set():
            # Returns as soon as it dispatched something; what those callbacks settled is then
            # published as one batch.
            connection.process_data_events(time_limit=POLL_SECONDS)
            self._enforce_time_limits()
            self._flush()
        self._drain(connection, channel)
        self._close(connection)

    def _declare(self, channel: BlockingChannel) -> None:
        broker.declare_topology(channel, self.settings, [self.worker_id])
        retries.declare_delay_queues(channel, self.settings)
        self._redeclare = False

    def _drain(self, connection: BlockingConnection, channel: BlockingChannel) -> None:
        """Stop taking tasks, finish those running within the grace period; what is left unacked
        goes back to its queue when the connection closes."""
        self._draining = True
        for tag in self._consumers:
            channel.basic_cancel(tag)
        self._consumers = []
        # Received but not started: back to the queue at once, where another worker can take them.
        while self._waiting:
            channel.basic_nack(self._waiting.popleft().tag, requeue=True)
        log("draining", worker_id=self.worker_id, in_hand=len(self._running), grace=self.grace)
        deadline = time.monotonic() + self.grace
        while self._running and (left := deadline - time.monotonic()) > 0:
            connection.process_data_events(time_limit=min(POLL_SECONDS, left))
            self._enforce_time_limits()
            self._flush()
        if self._running:
            log("grace_expired", worker_id=self.worker_id,
                requeued=[job.task.task_id for job in self._running.values()])
            for job in self._running.values():
                job.cancel.set()

    def _abandon(self, error: BaseException) -> None:
        """The connection is gone: its deliveries are the broker's again; stop their threads."""
        log("broker_lost", worker_id=self.worker_id, error=repr(error),
            in_hand=len(self._running) + len(self._waiting))
        self._generation += 1
        for job in [*self._running.values(), *self._waiting]:
            job.cancel.set()
        self._running.clear()
        self._waiting.clear()
        self._outbox = []
        self._confirming = None
        if self._connection is not None:
            self._close(self._connection)

    @staticmethod
    def _close(connection: BlockingConnection) -> None:
        if connection.is_open:
            with contextlib.suppress(CONNECTION_ERRORS):
                connection.close()

    # Deliveries ---------------------------------------------------------------------------------

    def _on_message(self, channel: BlockingChannel, method: pika.spec.Basic.Deliver,
                    _properties: pika.BasicProperties, body: bytes) -> None:
        try:
            task = parse_task(body)
        except MessageError as error:
            # Dead-lettered (the queues have a DLX to tasks.dead), never requeued: it would fail again.
            log("rejected", worker_id=self.worker_id, queue_key=method.routing_key, error=str(error),
                body=body[:200].decode("utf-8", "replace"))
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        assert self._connection is not None
        self._waiting.append(Job(task, method.delivery_tag, self._generation, self._connection))
        self._start_jobs()

    def _start_jobs(self) -> None:
        while self._waiting and len(self._running) < self.concurrency and not self._draining:
            job = self._waiting.popleft()
            self._running[job.tag] = job
            job.started_at = now_ms()
            job.limit = self.settings.time_limit(job.task.complexity)
            job.deadline = time.monotonic() + job.limit
            self._pool.submit(self._execute, job)

    def _execute(self, job: Job) -> None:
        """Pool thread: run the attempt, then hand the outcome to the connection thread."""
        if job.cancel.is_set():
            return
        try:
            outcome = run_attempt(job.task, self.worker_id, self.settings, self.store, job.cancel)
            if outcome.status != "skipped":
                self._processed.add()
        except Exception as error:  # a bug in the worker must still end in an outcome, not a lost task
            log("attempt_crashed", worker_id=self.worker_id, task_id=job.task.task_id, error=repr(error))
            outcome = Outcome("failed", job.started_at, now_ms(), error=f"worker error: {error!r}")
        # If that connection is gone, so is the delivery: the broker has requeued the message.
        with contextlib.suppress(CONNECTION_ERRORS):
            job.connection.add_callback_threadsafe(functools.partial(self._on_executed, job, outcome))

    def _is_current(self, job: Job) -> bool:
        return job.generation == self._generation and self._running.get(job.tag) is job

    def _on_executed(self, job: Job, outcome: Outcome) -> None:
        if not self._is_current(job) or job.decided is not None:
            if job.decided is not None:
                log("late_outcome_discarded", worker_id=self.worker_id, task_id=job.task.task_id,
                    status=outcome.status)
            return
        self._decide(job, outcome)

    def _enforce_time_limits(self) -> None:
        """Fails the running jobs past their time limit. Called after every poll of the connection
        (at least every POLL_SECONDS): one timer per task would cost more than the task at high rates."""
        now = time.monotonic()
        for job in [job for job in self._running.values() if job.deadline <= now and job.decided is None]:
            self._on_time_limit(job, job.limit)

    def _on_time_limit(self, job: Job, limit: float) -> None:
        # The thread cannot be killed; it is told to stop (the simulated work and `sleep` honour it
        # at once) and whatever it still returns is discarded, as the outcome is decided here.
        job.cancel.set()
        error = f"time limit exceeded: the task ran longer than {limit:g} s"
        log("time_limit", worker_id=self.worker_id, task_id=job.task.task_id, limit=limit)
        self._decide(job, Outcome("failed", job.started_at, now_ms(), error=error, retryable=False,
                                  reason="time_limit"))

    def _decide(self, job: Job, outcome: Outcome) -> None:
        job.decided = outcome
        self._settle(job)

    def _settle(self, job: Job) -> None:
        """Queue the job's publication; _flush publishes it (confirmed) and then acks the task."""
        if self._is_current(job) and job.decided is not None:
            self._outbox.append(job)

    def _flush(self) -> None:
        """Publishes what the settled jobs call for, as one batch, then acks each task message whose
        publication the broker confirmed."""
        jobs = [job for job in self._outbox if self._is_current(job) and job.decided is not None]
        self._outbox = []
        if not jobs or self._channel is None or self._confirming is None:
            return
        if self._redeclare:
            self._declare(self._channel)
        plans = [publication_for(self.settings, self.worker_id, job.task, job.decided)
                 for job in jobs if job.decided is not None]
        verdicts = publish_all(self._confirming, plans, self.settings.broker_timeout)
        for job, plan, verdict in zip(jobs, plans, verdicts, strict=True):
            if verdict == "ok":
                self._confirmed(job, plan)
            else:
                self._refused(job, verdict)
        self._start_jobs()

    def _confirmed(self, job: Job, plan: Publication | None) -> None:
        if plan is not None:
            log(plan.event, worker_id=self.worker_id, task_id=job.task.task_id, **plan.fields)
        assert self._channel is not None
        # The frame goes out with the connection's next poll, a moment later, instead of a blocking
        # flush per ack (BlockingChannel.basic_ack), which cost a fifth of a worker's CPU at high rates.
        # pika 1.x's impl channel, as ConfirmingChannel uses (pika is pinned below 2).
        self._channel._impl.basic_ack(job.tag)
        del self._running[job.tag]

    def _refused(self, job: Job, verdict: str | None) -> None:
        """Nacked or unroutable: keep the outcome (the work is not redone) and publish again shortly,
        after redeclaring the topology in case a queue was deleted under us. The task stays unacked."""
        job.publish_failures += 1
        self._redeclare = True
        delay = REPUBLISH.pause(job.publish_failures)
        log("publish_failed", worker_id=self.worker_id, task_id=job.task.task_id, verdict=verdict,
            retry_in=delay)
        job.connection.call_later(delay, functools.partial(self._settle, job))

"""One worker process: consumes its own queue and the shared one, runs tasks in a thread pool,
publishes each outcome with a broker confirm and only then acks the task message.

Threads: the main thread owns the broker connection (a taskcore.rabbitmq Consumer, not thread-safe)
and keeps polling it, so broker heartbeats flow however long a task runs; tasks run in a pool and
hand their outcome back with call_soon_threadsafe. Redis is only used from pool threads and the
heartbeat thread, so a slow Redis never stalls the connection.

Delivery guarantees: a task message is acked only after its result (or its retry) was confirmed by the
broker. If the worker dies or loses its connection first, the broker requeues the message; a task that
is already final when it comes back is acked without running (mark_running answers "final").
"""

from __future__ import annotations

import collections
import functools
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any

from taskcore.backoff import RECONNECT, REPUBLISH
from taskcore.keys import Keys
from taskcore.messages import MessageError
from taskcore.rabbitmq import Broker, BrokerError, Consumer, Delivery, QueueNotFound, Verdict
from taskcore.settings import Settings
from taskcore.store import TaskStore, now_ms
from worker_fleet.execution import AttemptOutcome, run_attempt
from worker_fleet.heartbeat import Heartbeat, Tally
from worker_fleet.jobs import Job, parse_task
from worker_fleet.logs import log
from worker_fleet.outcomes import publication_for

# Longest the connection thread blocks at once: the stop flag is seen at least this often.
POLL_SECONDS = 0.25
DEFAULT_GRACE_SECONDS = 30.0
# Work stealing (docs/worker_fleet.md): a slot left free this long, with nothing of the worker's own
# arriving for it, takes a task queued for another worker. Its own queue goes first: the broker
# delivers the next of its own within a round trip of the ack. A round that finds nothing doubles
# the pause before the next, up to STEAL_MAX_PAUSE_SECONDS, and only a round that finds something
# shortens it again: a fleet that keeps up with its load (slots idle between short tasks, every
# queue empty) asks the broker little (4 workers: 12 gets a second). Resetting it whenever a task
# ended cost the speed benchmark a tenth of its CPU per task, in gets that found nothing.
STEAL_AFTER_SECONDS = 0.05
STEAL_MAX_PAUSE_SECONDS = 1.0
# A get unanswered this long is given up (a quorum queue without a leader never answers), and that
# queue is left alone for STEAL_SKIP_SECONDS, so that the connection thread does not block on it
# every round.
STEAL_TIMEOUT_SECONDS = 1.0
STEAL_SKIP_SECONDS = 60.0


class WorkerState(StrEnum):
    CONNECTING = "connecting"  # no connection yet, or the last one was lost: (re)connecting
    CONSUMING = "consuming"  # taking tasks and running them
    DRAINING = "draining"  # told to stop: taking no more, finishing those in hand within the grace
    STOPPED = "stopped"


# Every change of state the worker makes; anything else is a bug, raised at once. A connection lost
# (CONNECTING) can happen in any state but the last; STOPPED from CONSUMING is a worker that crashed.
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.CONNECTING: frozenset({WorkerState.CONNECTING, WorkerState.CONSUMING, WorkerState.STOPPED}),
    WorkerState.CONSUMING: frozenset({WorkerState.CONNECTING, WorkerState.DRAINING, WorkerState.STOPPED}),
    WorkerState.DRAINING: frozenset({WorkerState.CONNECTING, WorkerState.STOPPED}),
    WorkerState.STOPPED: frozenset(),
}


class Worker:
    def __init__(self, settings: Settings, broker: Broker, worker_id: str, concurrency: int,
                 grace: float = DEFAULT_GRACE_SECONDS) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.grace = grace
        self.keys = Keys(settings.namespace)
        self.store = TaskStore(settings)
        self.broker = broker
        # Twice the slots: a thread that outlives its time limit (until its computation notices the
        # cancel) must not keep the next task from starting.
        self._pool = ThreadPoolExecutor(max_workers=2 * concurrency, thread_name_prefix=f"task-{worker_id}")
        self._stopping = threading.Event()
        self._backoff = RECONNECT.streak()
        self.state = WorkerState.CONNECTING
        # The connection of this session; a job from another one (or from none) is stale.
        self._consumer: Consumer | None = None
        self._outbox: list[Job] = []  # settled jobs whose publication is not yet sent
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[int, Job] = {}  # by delivery tag: started and not yet acked
        self._started_at = now_ms()
        self._processed = Tally()  # attempts ended, for the heartbeat's `processed`
        self._heartbeat: Heartbeat | None = None
        self._steal_pause = STEAL_AFTER_SECONDS
        self._steal_at = 0.0  # time.monotonic() before which no steal round starts (the pause)
        self._idle_since: float | None = None  # since when a slot has been free
        self._steal_turn = 0  # the peer a round starts with, so that no worker is always robbed first
        self._steal_skip: dict[str, float] = {}  # peer -> time.monotonic() until its queue is left alone

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
        heartbeat = self._heartbeat = Heartbeat(self.settings, self.worker_id, self.info, self._processed)
        heartbeat.start()
        log("worker_started", worker_id=self.worker_id, pid=os.getpid(), concurrency=self.concurrency)
        try:
            while not self._stopping.is_set():
                try:
                    self._session()
                except BrokerError as error:
                    self._abandon(error)
                    if self._stopping.is_set():
                        break
                    delay = self._backoff.next()
                    log("reconnecting", worker_id=self.worker_id, in_seconds=round(delay, 2))
                    self._stopping.wait(delay)
        finally:
            self._enter(WorkerState.STOPPED)
            heartbeat.stop()
            self._pool.shutdown(wait=False, cancel_futures=True)
        log("worker_stopped", worker_id=self.worker_id, pid=os.getpid())

    def info(self) -> dict[str, Any]:
        """The heartbeat's self-report (read from the heartbeat thread; len() is atomic)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": self._started_at,
                "concurrency": self.concurrency, "in_flight": len(self._running) + len(self._waiting)}

    def _enter(self, state: WorkerState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"worker {self.worker_id}: no way from {self.state} to {state}")
        self.state = state

    # One connection -----------------------------------------------------------------------------

    def _session(self) -> None:
        # Shown by rabbitmqctl/the management UI; the namespace tells apart stacks sharing a broker.
        consumer = self.broker.open_consumer(f"worker {self.keys.prefix}{self.worker_id}")
        self._consumer = consumer
        consumer.declare([self.worker_id])
        self._outbox = []
        self._enter(WorkerState.CONSUMING)
        # Deliveries beyond the free slots wait in _waiting, not in a thread.
        consumer.consume(self.keys.worker_queue(self.worker_id),
                         self.concurrency * self.settings.prefetch_multiplier, self._on_delivery)
        consumer.consume(self.keys.shared_queue, self.concurrency, self._on_delivery)
        log("connected", worker_id=self.worker_id, pid=os.getpid())
        self._backoff.reset()
        self._idle_since = None  # what is queued for it comes first
        while not self._stopping.is_set():
            # Returns as soon as it dispatched something; what those callbacks settled is then
            # published as one batch.
            self._poll(self._poll_seconds())
            self._steal()
        self._drain(consumer)
        consumer.close()

    def _poll(self, seconds: float) -> None:
        assert self._consumer is not None
        self._consumer.poll(seconds)
        self._enforce_time_limits()
        self._flush()

    def _drain(self, consumer: Consumer) -> None:
        """Stop taking tasks, finish those running within the grace period; what is left unacked
        goes back to its queue when the connection closes."""
        self._enter(WorkerState.DRAINING)
        consumer.cancel()
        # Received but not started: back to the queue at once, where another worker can take them.
        while self._waiting:
            consumer.reject(self._waiting.popleft().tag, requeue=True)
        log("draining", worker_id=self.worker_id, in_hand=len(self._running), grace=self.grace)
        deadline = time.monotonic() + self.grace
        while self._running and (left := deadline - time.monotonic()) > 0:
            self._poll(min(POLL_SECONDS, left))
        if self._running:
            log("grace_expired", worker_id=self.worker_id,
                requeued=[job.task.task_id for job in self._running.values()])
            for job in self._running.values():
                job.cancel.set()

    def _abandon(self, error: BaseException) -> None:
        """The connection is gone: its deliveries are the broker's again; stop their threads."""
        log("broker_lost", worker_id=self.worker_id, error=repr(error),
            in_hand=len(self._running) + len(self._waiting))
        self._enter(WorkerState.CONNECTING)
        for job in [*self._running.values(), *self._waiting]:
            job.cancel.set()
        self._running.clear()
        self._waiting.clear()
        self._outbox = []
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    # Deliveries ---------------------------------------------------------------------------------

    def _on_delivery(self, delivery: Delivery, stolen_from: str = "") -> None:
        assert self._consumer is not None
        try:
            task = parse_task(delivery.body)
        except MessageError as error:
            # Dead-lettered (the queues have a DLX to tasks.dead), never requeued: it would fail again.
            log("rejected", worker_id=self.worker_id, queue_key=delivery.routing_key, error=str(error),
                body=delivery.body[:200].decode("utf-8", "replace"))
            self._consumer.reject(delivery.tag, requeue=False)
            return
        self._waiting.append(Job(task, delivery.tag, self._consumer, delivery.redelivered, stolen_from))
        self._start_jobs()

    def _start_jobs(self) -> None:
        while self._waiting and len(self._running) < self.concurrency and self.state is WorkerState.CONSUMING:
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
            outcome = run_attempt(job.task, self.worker_id, self.settings, self.store, job.cancel,
                                  job.redelivered, job.stolen_from)
            if outcome.status not in ("skipped", "poison"):
                self._processed.add()
        except Exception as error:  # a bug in the worker must still end in an outcome, not a lost task
            log("attempt_crashed", worker_id=self.worker_id, task_id=job.task.task_id, error=repr(error))
            outcome = AttemptOutcome("failed", job.started_at, now_ms(), error=f"worker error: {error!r}")
        # If that connection is gone, so is the delivery: the broker has requeued the message.
        job.consumer.call_soon_threadsafe(functools.partial(self._on_executed, job, outcome))

    def _is_current(self, job: Job) -> bool:
        return job.consumer is self._consumer and self._running.get(job.tag) is job

    def _on_executed(self, job: Job, outcome: AttemptOutcome) -> None:
        if job.decided is not None:
            log("late_outcome_discarded", worker_id=self.worker_id, task_id=job.task.task_id,
                status=outcome.status)
        elif self._is_current(job):
            self._settle(job, outcome)

    def _enforce_time_limits(self) -> None:
        """Fails the running jobs past their time limit. Called after every poll of the connection
        (at least every POLL_SECONDS): one timer per task would cost more than the task at high rates."""
        now = time.monotonic()
        for job in [job for job in self._running.values() if job.deadline <= now and job.decided is None]:
            # The thread cannot be killed; it is told to stop (the simulated work and `sleep` honour
            # it at once) and whatever it still returns is discarded, as the outcome is decided here.
            job.cancel.set()
            error = f"time limit exceeded: the task ran longer than {job.limit:g} s"
            log("time_limit", worker_id=self.worker_id, task_id=job.task.task_id, limit=job.limit)
            self._settle(job, AttemptOutcome("failed", job.started_at, now_ms(), error=error,
                                             retryable=False, reason="time_limit"))

    def _settle(self, job: Job, outcome: AttemptOutcome) -> None:
        """The outcome that counts for this job; _flush publishes it (confirmed), then acks the task."""
        job.decided = outcome
        self._outbox.append(job)

    def _flush(self) -> None:
        """Publishes what the settled jobs call for, as one batch, then acks each task message whose
        publication the broker confirmed. A refused one (nacked, or unroutable) keeps its outcome
        (the work is not redone) and is published again shortly; its task stays unacked meanwhile."""
        jobs = [job for job in self._outbox if self._is_current(job) and job.decided is not None]
        self._outbox = []
        consumer = self._consumer
        if not jobs or consumer is None:
            return
        for job in [job for job in jobs if job.decided is not None and job.decided.status == "poison"]:
            # Past the delivery limit (counted on classic queues): to tasks.dead through the queue's
            # dead-letter exchange, where the janitor fails the task, as a quorum queue would do.
            consumer.reject(job.tag, requeue=False)
            del self._running[job.tag]
            jobs.remove(job)
        plans = [publication_for(self.settings, self.worker_id, job.task, job.decided)
                 for job in jobs if job.decided is not None]
        wanted = [(index, plan) for index, plan in enumerate(plans) if plan is not None]
        verdicts = [Verdict.OK] * len(plans)  # nothing to publish (a skipped task): just ack it
        for (index, _), verdict in zip(wanted, consumer.publish([(p.exchange, p.message) for _, p in wanted]),
                                       strict=True):
            verdicts[index] = verdict
        for job, plan, verdict in zip(jobs, plans, verdicts, strict=True):
            if verdict is Verdict.OK:
                if plan is not None:
                    log(plan.event, worker_id=self.worker_id, task_id=job.task.task_id, **plan.fields)
                consumer.ack(job.tag)  # goes out with the next poll, without a round trip of its own
                del self._running[job.tag]
            else:
                job.publish_failures += 1
                delay = REPUBLISH.pause(job.publish_failures)
                log("publish_failed", worker_id=self.worker_id, task_id=job.task.task_id, verdict=verdict,
                    retry_in=delay)
                # Settled again later with the same outcome; the consumer redeclares the topology
                # before its next publish, in case a queue was deleted under us.
                consumer.call_later(delay, functools.partial(self._settle, job, job.decided))
        self._start_jobs()

    # Work stealing ------------------------------------------------------------------------------

    def _free_slots(self) -> int:
        return self.concurrency - len(self._running) - len(self._waiting)

    def _next_steal(self) -> float | None:
        """time.monotonic() of the next steal round, or None while every slot is taken: a slot must
        have been free STEAL_AFTER_SECONDS (its own queue first), and the pause be over."""
        if not self.settings.work_stealing or self._free_slots() <= 0:
            self._idle_since = None
            return None
        if self._idle_since is None:
            self._idle_since = time.monotonic()
        return max(self._steal_at, self._idle_since + STEAL_AFTER_SECONDS)

    def _poll_seconds(self) -> float:
        due = self._next_steal()
        return POLL_SECONDS if due is None else min(POLL_SECONDS, max(0.0, due - time.monotonic()))

    def _steal(self) -> None:
        """With slots free and the pause over, takes tasks from the queues of the other live workers
        (those the heartbeat last saw), one get at a time, until the slots are full or the queues
        empty. A stolen message stays unacked until its outcome is confirmed, as any other; if this
        worker dies first, it goes back to the queue it came from."""
        consumer, due = self._consumer, self._next_steal()
        if due is None or time.monotonic() < due:
            return
        if consumer is None or self.state is not WorkerState.CONSUMING:
            return
        live = self._heartbeat.live if self._heartbeat is not None else ()
        now = time.monotonic()
        peers = [worker for worker in live
                 if worker != self.worker_id and self._steal_skip.get(worker, 0.0) <= now]
        self._steal_turn += 1
        stolen = 0
        for index in range(len(peers)):
            peer = peers[(self._steal_turn + index) % len(peers)]
            while self._free_slots() > 0:
                asked = time.monotonic()
                try:
                    delivery = consumer.steal(self.keys.worker_queue(peer), STEAL_TIMEOUT_SECONDS)
                except QueueNotFound:  # reaped since the heartbeat looked
                    break
                if delivery is None:
                    if time.monotonic() - asked >= STEAL_TIMEOUT_SECONDS:
                        log("steal_timeout", worker_id=self.worker_id, peer=peer, skip_for=STEAL_SKIP_SECONDS)
                        self._steal_skip[peer] = time.monotonic() + STEAL_SKIP_SECONDS
                    break
                stolen += 1
                self._on_delivery(delivery, stolen_from=peer)
            if self._free_slots() <= 0:
                break
        pause = STEAL_AFTER_SECONDS if stolen else min(2 * self._steal_pause, STEAL_MAX_PAUSE_SECONDS)
        self._steal_pause = pause
        self._steal_at = time.monotonic() + self._steal_pause

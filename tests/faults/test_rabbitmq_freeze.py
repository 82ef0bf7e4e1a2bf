"""Freezes RabbitMQ under the functions' broker client (taskcore.rabbitmq.amqp.AmqpBroker): the private
node's process group is SIGSTOPped, as a hung or partitioned broker, then resumed.

Proves: a publish to a broker that stopped answering fails within its timeouts (the confirm wait,
then the reconnect's handshake) as a PublishError naming every message unconfirmed, and an
inspection as BrokerUnavailable, rather than hanging the invocation; once the node resumes, the
next publish goes out on a new connection and is confirmed. End to end, through the producer: a
submission published into the frozen node is answered 503, and the supervisor has undone it by
then, so nothing runs behind the caller's back once the node resumes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from taskcore.keys import Keys
from taskcore.messages import fingerprint
from taskcore.rabbitmq import BrokerUnavailable, PublishError
from taskcore.rabbitmq.amqp import AmqpBroker
from taskcore.settings import Settings
from taskfaas.stack import cleanup, eventually, new_namespace
from tests.faults.conftest import REPORT, Faults, PrivateRabbitMQ
from tests.faults.helpers import new_id, sleep_task, unique_seconds

TIMEOUT = 1.0  # BROKER_TIMEOUT: each wait (confirms, handshake, a reply) gives up after it
# Seconds the test waits, after the producer's 503, before it reads what the supervisor left.
SUPERVISE_AFTER_PRODUCER = 3.0


def group_states(group: int) -> list[str]:
    """The state letter (/proc/<pid>/stat) of every process in a process group."""
    states = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group:  # after the name: state, ppid, pgrp
                states.append(fields[0])
    return states


def freeze(group: int) -> None:
    """SIGSTOP to the group, then waits until every process in it is stopped: the signal is only
    queued when killpg returns, and a node running on the other core could still answer."""
    os.killpg(group, signal.SIGSTOP)
    eventually(lambda: (states := group_states(group)) and all(state == "T" for state in states), 5,
               "the node stopped")


def test_a_frozen_broker_fails_publishes_in_time_and_a_resumed_one_takes_them(
        private_rabbitmq: PrivateRabbitMQ) -> None:
    settings = Settings.from_env({}, namespace=new_namespace("t", ":"), rabbitmq_url=private_rabbitmq.url,
                                 broker_timeout=TIMEOUT)
    broker = AmqpBroker(settings)
    keys, process = broker.keys, private_rabbitmq.process
    assert process is not None
    try:
        broker.declare()
        broker.publish(keys.tasks_exchange, [("shared", b"{}", "before")])
        first = broker._link.connection  # the implementation's own
        freeze(process.pid)
        try:
            began = time.monotonic()
            try:
                broker.publish(keys.tasks_exchange,
                               [("shared", b"{}", "frozen1"), ("shared", b"{}", "frozen2")])
            except PublishError as error:
                assert error.unconfirmed == [0, 1] and not error.nacked and not error.unroutable
            else:
                raise AssertionError("a frozen broker confirmed a publish")
            # The confirm wait, a close that gets no answer, then a handshake that gets none: each
            # bounded by the timeout.
            assert time.monotonic() - began < 5 * TIMEOUT
            began = time.monotonic()
            try:
                broker.queue_state(keys.shared_queue)
            except BrokerUnavailable:
                pass
            else:
                raise AssertionError("a frozen broker answered")
            assert time.monotonic() - began < 3 * TIMEOUT
        finally:
            os.killpg(process.pid, signal.SIGCONT)
        broker.publish(keys.tasks_exchange, [("shared", b"{}", "after")])
        assert broker._link.connection is not first
        got = []
        with broker.reader(keys.shared_queue) as reader:
            while (delivery := reader.get()) is not None:
                reader.ack(delivery.tag)
                got.append(delivery.message_id)
        # What the frozen node had received before we gave up may be taken when it resumes: at
        # least once, as the PublishError said (unconfirmed, not refused).
        assert got[0] == "before" and got[-1] == "after", got
        assert set(got) <= {"before", "frozen1", "frozen2", "after"}, got
    finally:
        broker.close()
        # Its queues die with the private node; its owner's marker is on the shared Redis.
        cleanup(settings.namespace, rabbitmq_url=private_rabbitmq.url,
                rabbitmqctl=private_rabbitmq.rabbitmqctl)


def test_submission_answered_503_while_the_broker_is_frozen_leaves_nothing(
        faults_factory: Callable[..., Faults]) -> None:
    """End to end, through the producer: the node frozen while a submission is published. The
    producer answers 503 after its wait for the supervisor (SUPERVISOR_TIMEOUT); by then the
    supervisor must have given up and undone the admission, so that nothing is left that could run
    or block the same id behind the caller's back, even once the node resumes."""
    faults = faults_factory(workers=1, concurrency=2)
    stack, rabbitmq = faults.stack, faults.rabbitmq
    assert rabbitmq.process is not None
    # Warm supervisor environments, whose broker connections are open: the publish is what waits.
    for _ in range(4):
        warm = sleep_task(unique_seconds(0.05), new_id("warm"))
        assert stack.produce(warm)[0] == 202
        assert stack.wait_final(warm["task_id"], timeout=15)["status"] == "succeeded"
    task = sleep_task(unique_seconds(0.1), new_id("frozen"))
    freeze(rabbitmq.process.pid)
    try:
        began = time.monotonic()
        status, answer = stack.produce(task)
        waited = time.monotonic() - began
        assert status == 503, (status, answer)
        # The supervisor's own invocation ends too (it may outlast the producer's answer a little):
        # what its undo left is what counts.
        time.sleep(SUPERVISE_AFTER_PRODUCER)
        frozen_leftover = stack.result(task["task_id"])
    finally:
        os.killpg(rabbitmq.process.pid, signal.SIGCONT)
    time.sleep(2)  # whatever the node had received is processed now
    leftover = stack.result(task["task_id"])
    keys = Keys(stack.namespace)
    claim = faults.redis.client().get(keys.inflight(fingerprint("sleep", task["payload"])))
    REPORT.append(f"503 during the RabbitMQ freeze after {waited:.1f}s: GET /results then -> "
                  f"{frozen_leftover[0]}, after the resume -> {leftover[0]} {leftover[1].get('status')}, "
                  f"inflight claim {claim!r}")
    assert frozen_leftover[0] == 404 and leftover[0] == 404 and claim is None, (leftover, claim)
    # The same id, submitted again, runs.
    status, answer = stack.produce(task)
    assert status == 202, answer
    assert stack.wait_final(task["task_id"], timeout=30)["status"] == "succeeded"

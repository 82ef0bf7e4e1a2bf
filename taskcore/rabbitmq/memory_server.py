"""An in-memory RabbitMQ for tests: exchanges, queues, bindings, and the channels connected to it;
taskcore.rabbitmq.memory's MemoryBroker and MemoryConsumer are its clients (that module says what it
models and what not).

Every operation holds one lock; a consumer's callbacks (its deliveries, call_soon, call_later) are
collected in its channel and run by its own thread when it polls (`wait`), outside the lock.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from taskcore.rabbitmq.interface import (
    BrokerError,
    BrokerUnavailable,
    Delivery,
    OutgoingMessage,
    QueueNotFound,
    QueueState,
    Verdict,
)
from taskcore.rabbitmq.topology import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_ROUTING_KEY,
    DELIVERY_LIMIT,
    MESSAGE_TTL,
    QueueSpec,
)

DEFAULT_EXCHANGE = ""


@dataclass
class _Message:
    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None
    headers: dict[str, Any] = field(default_factory=dict)
    returns: int = 0  # times it came back unacked (what x-delivery-limit counts)
    expires_at: float | None = None


@dataclass(eq=False)
class _Subscription:
    channel: ServerChannel
    queue: str
    prefetch: int
    callback: Callable[[Delivery], None]
    unacked: int = 0


@dataclass(eq=False)
class ServerChannel:
    """A connection with one channel: its deliveries, the callbacks due in it, what it holds unacked."""

    name: str
    unacked: dict[int, tuple[str, _Message, _Subscription | None]] = field(default_factory=dict)
    ready: collections.deque[Callable[[], None]] = field(default_factory=collections.deque)
    timers: list[tuple[float, Callable[[], None]]] = field(default_factory=list)
    tags: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    open: bool = True


class MemoryServer:
    """One in-memory RabbitMQ: exchanges, queues, bindings and the channels connected to it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # for message TTLs; a test may pass one it advances itself
        self.available = True
        # Queues without a leader, as RabbitMQ 3.10 may leave a quorum queue after a crash
        # (docs/taskcore.md): what is routed to them is never confirmed, nor delivered.
        self.leaderless: set[str] = set()
        self._changed = threading.Condition(threading.RLock())
        self._exchanges: set[str] = {DEFAULT_EXCHANGE}
        self._queues: dict[str, QueueSpec] = {}
        self._ready: dict[str, collections.deque[_Message]] = {}
        self._bindings: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        self._subscriptions: list[_Subscription] = []
        self._channels: list[ServerChannel] = []

    # Declarations ---------------------------------------------------------------------------------

    def declare_exchange(self, name: str) -> None:
        with self._changed:
            self._check()
            self._exchanges.add(name)

    def declare_queue(self, spec: QueueSpec) -> None:
        with self._changed:
            self._check()
            known = self._queues.get(spec.name)
            if known is not None and known.arguments != spec.arguments:
                raise BrokerError(f"406 PRECONDITION_FAILED: {spec.name} exists with other arguments")
            if known is None:
                self._queues[spec.name] = replace(spec, bindings=())
                self._ready[spec.name] = collections.deque()
            for exchange, routing_key in spec.bindings:
                if exchange not in self._exchanges:
                    raise BrokerError(f"404 NOT_FOUND: no exchange {exchange!r}")
                if spec.name not in self._bindings[(exchange, routing_key)]:
                    self._bindings[(exchange, routing_key)].append(spec.name)

    def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        with self._changed:
            self._check()
            with contextlib.suppress(ValueError):
                self._bindings[(exchange, routing_key)].remove(queue)

    def delete_queue(self, name: str) -> None:
        with self._changed:
            self._check()
            self._queues.pop(name, None)
            self._ready.pop(name, None)
            for bound in self._bindings.values():
                with contextlib.suppress(ValueError):
                    bound.remove(name)
            self._subscriptions = [s for s in self._subscriptions if s.queue != name]

    def queue_state(self, name: str) -> QueueState:
        with self._changed:
            self._check()
            self._expire()
            if name not in self._queues:
                raise QueueNotFound(name)
            return QueueState(len(self._ready[name]), sum(s.queue == name for s in self._subscriptions))

    # Messages -------------------------------------------------------------------------------------

    def publish(self, exchange: str, message: OutgoingMessage) -> Verdict | None:
        """The broker's verdict on the message; None if it never gives one (a leaderless queue)."""
        with self._changed:
            self._check()
            if exchange not in self._exchanges:
                raise BrokerError(f"404 NOT_FOUND: no exchange {exchange!r}")
            verdict = self._route(_Message(exchange, message.routing_key, message.body, message.message_id))
            self._dispatch()
            return verdict

    def connect(self, name: str) -> ServerChannel:
        with self._changed:
            self._check()
            channel = ServerChannel(name)
            self._channels.append(channel)
            return channel

    def subscribe(self, channel: ServerChannel, queue: str, prefetch: int,
                  callback: Callable[[Delivery], None]) -> None:
        with self._changed:
            self.ensure_open(channel)
            if queue not in self._queues:
                raise BrokerError(f"404 NOT_FOUND: no queue {queue!r}")
            self._subscriptions.append(_Subscription(channel, queue, prefetch, callback))
            self._dispatch()

    def cancel(self, channel: ServerChannel) -> None:
        with self._changed:
            self.ensure_open(channel)
            self._subscriptions = [s for s in self._subscriptions if s.channel is not channel]

    def get(self, channel: ServerChannel, queue: str) -> Delivery | None:
        with self._changed:
            self.ensure_open(channel)
            self._expire()
            if queue not in self._queues:
                raise QueueNotFound(queue)
            if not self._ready[queue]:
                return None
            return self._hand_out(channel, queue, self._ready[queue].popleft(), None)

    def settle(self, channel: ServerChannel, tag: int, *, ack: bool, requeue: bool = False,
               multiple: bool = False) -> None:
        """basic.ack (ack) or basic.reject/nack: back to the queue (requeue) or dead-lettered."""
        with self._changed:
            self.ensure_open(channel)
            tags = [t for t in channel.unacked if t <= tag] if multiple else [tag]
            for settled in tags:
                if settled not in channel.unacked:
                    raise BrokerError(f"406 PRECONDITION_FAILED: unknown delivery tag {settled}")
                queue, message, subscription = channel.unacked.pop(settled)
                if subscription is not None:
                    subscription.unacked -= 1
                if not ack and requeue:
                    self._return(queue, message)
                elif not ack:
                    self._dead_letter(queue, message, "rejected")
            self._dispatch()

    def close(self, channel: ServerChannel) -> None:
        """The connection closes: its subscriptions end, what it held goes back to the queues."""
        with self._changed:
            if not channel.open:
                return
            channel.open = False
            self._channels.remove(channel)
            self._subscriptions = [s for s in self._subscriptions if s.channel is not channel]
            for queue, message, _ in reversed(channel.unacked.values()):
                self._return(queue, message)
            channel.unacked.clear()
            self._dispatch()

    def drop_connections(self, name: str | None = None) -> None:
        """As `rabbitmqctl close_connection`: closes the connections called `name` (all if None)."""
        with self._changed:
            for channel in [c for c in self._channels if name in (None, c.name)]:
                self.close(channel)

    # The connection thread's loop -----------------------------------------------------------------

    def call_soon(self, channel: ServerChannel, callback: Callable[[], None], delay: float = 0.0) -> None:
        with self._changed:
            if not channel.open:
                return
            if delay > 0:
                channel.timers.append((time.monotonic() + delay, callback))
            else:
                channel.ready.append(callback)
            self._changed.notify_all()

    def wait(self, channel: ServerChannel, seconds: float) -> list[Callable[[], None]]:
        """The callbacks due in `channel`, waiting up to `seconds` for one."""
        deadline = time.monotonic() + seconds
        with self._changed:
            while True:
                self.ensure_open(channel)
                self._expire()
                self._dispatch()
                now = time.monotonic()
                due = [callback for at, callback in channel.timers if at <= now]
                channel.timers = [(at, callback) for at, callback in channel.timers if at > now]
                if channel.ready or due or now >= deadline:
                    ready, channel.ready = [*channel.ready, *due], collections.deque()
                    return ready
                # Woken by any change; a timer or a TTL coming due is no change: wait until then at most.
                timers = [at - now for at, _ in channel.timers]
                self._changed.wait(min([deadline - now, *timers, *self._expiries()]))

    # Inside the lock ------------------------------------------------------------------------------

    def _check(self) -> None:
        if not self.available:
            raise BrokerUnavailable("broker unavailable: the in-memory broker is down")

    def ensure_open(self, channel: ServerChannel) -> None:
        """Raises BrokerUnavailable if the server is down or this connection was closed."""
        self._check()
        if not channel.open:
            raise BrokerUnavailable(f"broker unavailable: connection {channel.name!r} is closed")

    def _route(self, message: _Message) -> Verdict | None:
        if message.exchange == DEFAULT_EXCHANGE:
            queues = [message.routing_key] if message.routing_key in self._queues else []
        else:
            queues = list(self._bindings.get((message.exchange, message.routing_key), []))
        if not queues:
            return Verdict.UNROUTABLE
        if self.leaderless & set(queues):
            return None
        if any(self._full(queue) for queue in queues):
            return Verdict.NACK
        for queue in queues:
            ttl = self._queues[queue].arguments.get(MESSAGE_TTL)
            expires_at = None if ttl is None else self.clock() + ttl / 1000
            self._ready[queue].append(replace(message, headers=dict(message.headers), expires_at=expires_at))
        self._changed.notify_all()
        return Verdict.OK

    def _full(self, queue: str) -> bool:
        arguments = self._queues[queue].arguments
        limit = arguments.get("x-max-length")
        return limit is not None and arguments.get("x-overflow") == "reject-publish" \
            and len(self._ready[queue]) >= limit

    def _return(self, queue: str, message: _Message) -> None:
        if queue not in self._queues:
            return  # deleted meanwhile: gone with it
        message.returns += 1
        limit = self._queues[queue].arguments.get(DELIVERY_LIMIT)
        if limit is not None and message.returns > limit:
            self._dead_letter(queue, message, "delivery_limit")
        else:
            self._ready[queue].appendleft(message)
            self._changed.notify_all()

    def _dead_letter(self, queue: str, message: _Message, reason: str) -> None:
        arguments = self._queues[queue].arguments if queue in self._queues else {}
        exchange = arguments.get(DEAD_LETTER_EXCHANGE)
        if exchange is None or exchange not in self._exchanges:
            return  # dropped, as RabbitMQ drops it
        death = {"reason": reason, "queue": queue, "exchange": message.exchange,
                 "routing-keys": [message.routing_key], "count": 1}
        headers = {**message.headers, "x-death": [death, *message.headers.get("x-death", [])]}
        self._route(_Message(exchange, arguments.get(DEAD_LETTER_ROUTING_KEY, message.routing_key),
                             message.body, message.message_id, headers))

    def _expiries(self) -> list[float]:
        """Seconds until the first message of each queue with a TTL expires."""
        now = self.clock()
        return [ready[0].expires_at - now for ready in self._ready.values()
                if ready and ready[0].expires_at is not None]

    def _expire(self) -> None:
        now = self.clock()
        for name in [n for n, spec in self._queues.items() if MESSAGE_TTL in spec.arguments]:
            ready = self._ready[name]
            while ready and ready[0].expires_at is not None and ready[0].expires_at <= now:
                self._dead_letter(name, ready.popleft(), "expired")

    def _dispatch(self) -> None:
        """Hands ready messages to subscriptions with room under their prefetch, in turn."""
        for queue, ready in self._ready.items():
            subscriptions = [s for s in self._subscriptions if s.queue == queue]
            while ready and (room := [s for s in subscriptions if s.unacked < s.prefetch]):
                subscription = min(room, key=lambda s: s.unacked)
                delivery = self._hand_out(subscription.channel, queue, ready.popleft(), subscription)
                subscription.unacked += 1
                subscription.channel.ready.append(lambda s=subscription, d=delivery: s.callback(d))
                self._changed.notify_all()

    def _hand_out(self, channel: ServerChannel, queue: str, message: _Message,
                  subscription: _Subscription | None) -> Delivery:
        tag = next(channel.tags)
        channel.unacked[tag] = (queue, message, subscription)
        return Delivery(tag, message.body, message.routing_key, message.exchange, message.returns > 0,
                        message.message_id, dict(message.headers))

"""Everything RabbitMQ, in one place (docs/taskcore.md, Broker).

    interface  Broker (publishing with confirms, declarations, the janitor's queue operations),
               Consumer (a worker's consume/ack/publish), QueueReader, Delivery, OutgoingMessage,
               Verdict, and the errors: BrokerError, BrokerUnavailable, QueueNotFound, PublishError
    topology   the namespace's exchanges, queues and bindings as data, retry delay queues included
    amqp       AmqpBroker: the real thing for the functions (publishing with confirms, the topology,
               the janitor's reads), through py-amqp (the only importer of `amqp`)
    pika_consumer  AmqpConsumer: the worker's side of the real thing, through pika (the only
               importer of pika), opened by AmqpBroker.open_consumer
    memory     MemoryBroker / MemoryConsumer: the same interface in memory, for fast unit tests,
               clients of memory_server's MemoryServer (an in-memory RabbitMQ)

Importing this package (its interface) imports neither client library; take the implementation from
its module: `from taskcore.rabbitmq.amqp import AmqpBroker` (which loads pika only when a consumer is
opened). Why two libraries: docs/taskcore.md, Broker.
"""

from taskcore.rabbitmq.interface import (
    Broker,
    BrokerError,
    BrokerUnavailable,
    Consumer,
    Delivery,
    OutgoingMessage,
    PublishError,
    QueueNotFound,
    QueueReader,
    QueueState,
    Verdict,
)
from taskcore.rabbitmq.topology import QueueSpec, Topology, topology

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Consumer",
    "Delivery",
    "OutgoingMessage",
    "PublishError",
    "QueueNotFound",
    "QueueReader",
    "QueueSpec",
    "QueueState",
    "Topology",
    "Verdict",
    "topology",
]

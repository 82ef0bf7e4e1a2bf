"""Declares the system's exchanges and queues (idempotent): `python infra/declare_topology.py`.

Reads RABBITMQ_URL and NAMESPACE from the environment, like every other part."""

from __future__ import annotations

from taskcore.rabbitmq.amqp import AmqpBroker
from taskcore.settings import Settings


def main() -> None:
    with AmqpBroker(Settings.from_env()) as broker:
        broker.declare()
        topology = broker.topology()
    print(f"topology: exchanges {', '.join(topology.exchanges)}; "
          f"queues {', '.join(queue.name for queue in topology.queues)} declared")


if __name__ == "__main__":
    main()

"""Declares the system's exchanges and queues (idempotent): `python infra/declare_topology.py`.

Reads RABBITMQ_URL and NAMESPACE from the environment, like every other part."""

from __future__ import annotations

import pika

from taskcore.broker import connection_parameters, declare_topology
from taskcore.keys import Keys
from taskcore.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    connection = pika.BlockingConnection(connection_parameters(settings.rabbitmq_url, 10))
    try:
        declare_topology(connection.channel(), settings)
    finally:
        connection.close()
    keys = Keys(settings.namespace)
    print(f"topology: exchanges {keys.tasks_exchange}, {keys.results_exchange}; "
          f"queues {keys.shared_queue}, {keys.results_queue}, {keys.tasks_dead_queue}, "
          f"{keys.results_dead_queue} declared")


if __name__ == "__main__":
    main()

"""The long-running worker fleet (docs/architecture.md §1, §4, §5; docs/worker_fleet.md).

`python -m worker_fleet --workers N --concurrency C` starts a parent (fleet.py) that keeps N worker
processes (worker.py) alive under stable ids. Each worker consumes its own queue and the shared one,
runs tasks in a thread pool (execution.py), publishes results with a broker confirm, retries failures
through the retry delay queues (outcomes.py) and heartbeats to Redis (heartbeat.py). It reaches
RabbitMQ only through taskcore.rabbitmq.
"""

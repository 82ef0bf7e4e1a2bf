"""The long-running worker fleet (DESIGN §1, §4, §5).

`python -m worker_fleet --workers N --concurrency C` starts a parent (fleet.py) that keeps N worker
processes (worker.py) alive under stable ids. Each worker consumes its own queue and the shared one,
runs tasks in a thread pool (execution.py), publishes results with a broker confirm, retries failures
through delay queues (retries.py) and heartbeats to Redis (heartbeat.py).
"""

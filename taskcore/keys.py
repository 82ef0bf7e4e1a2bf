"""Every Redis key and RabbitMQ name of the system, with the NAMESPACE prefix applied
(docs/architecture.md §4, §5).

The Lua scripts build the per-task keys themselves from the prefix they receive (a batch touches
keys only known once the script runs), so the suffixes below are the single source for them too:
scripts.py passes `Keys.prefix` and the scripts append these same suffixes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Redis key suffixes (the scripts in scripts.py use the same literals after the prefix).
TASK = "task:"            # hash: the task record
RESULT = "result:"        # string: cached successful result, by fingerprint
INFLIGHT = "inflight:"    # string: id of the leader computing a fingerprint
FOLLOWERS = "followers:"  # set: ids waiting on the leader of a fingerprint
DONE = "done:"            # list: wake-up marker for long-polls, pushed when a task becomes final
WORKERS = "workers"       # zset: worker id -> last heartbeat (ms)
WORKER = "worker:"        # hash: a worker's self-report
RR = "rr"                 # counter: round-robin cursor
UNCONFIRMED = "unconfirmed:"  # string with a TTL: a worker whose queue did not confirm a publish
STATS = "stats"           # hash: counters and gauges for GET /stats
THROUGHPUT = "tput:"      # counter per minute: tasks that became final (recent throughput)
RECENT = "recent"         # zset: the last RECENT_TASKS task ids admitted, by submission (GET /tasks)
OWNER = "owner"           # string: who created the namespace for a test or benchmark (infra/clean_state.py)

# RabbitMQ names (before the prefix).
TASKS_EXCHANGE = "tasks"
RESULTS_EXCHANGE = "results"
DEAD_EXCHANGE = "dead"
SHARED = "shared"


@dataclass(frozen=True)
class Keys:
    """Names for one namespace. `Keys("t1:").task("a")` -> "t1:task:a"."""

    prefix: str = ""

    # Redis
    def task(self, task_id: str) -> str:
        return f"{self.prefix}{TASK}{task_id}"

    def result(self, fingerprint: str) -> str:
        return f"{self.prefix}{RESULT}{fingerprint}"

    def inflight(self, fingerprint: str) -> str:
        return f"{self.prefix}{INFLIGHT}{fingerprint}"

    def followers(self, fingerprint: str) -> str:
        return f"{self.prefix}{FOLLOWERS}{fingerprint}"

    def done(self, task_id: str) -> str:
        return f"{self.prefix}{DONE}{task_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}{WORKERS}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}{WORKER}{worker_id}"

    def unconfirmed(self, worker_id: str) -> str:
        return f"{self.prefix}{UNCONFIRMED}{worker_id}"

    @property
    def rr(self) -> str:
        return f"{self.prefix}{RR}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}{STATS}"

    def throughput(self, minute: int) -> str:
        return f"{self.prefix}{THROUGHPUT}{minute}"

    @property
    def recent(self) -> str:
        return f"{self.prefix}{RECENT}"

    @property
    def owner(self) -> str:
        return f"{self.prefix}{OWNER}"

    # RabbitMQ exchanges
    @property
    def tasks_exchange(self) -> str:
        return f"{self.prefix}{TASKS_EXCHANGE}"

    @property
    def results_exchange(self) -> str:
        return f"{self.prefix}{RESULTS_EXCHANGE}"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}{DEAD_EXCHANGE}"

    # RabbitMQ queues
    def worker_queue(self, worker_id: str) -> str:
        return f"{self.prefix}tasks.w.{worker_id}"

    @property
    def shared_queue(self) -> str:
        return f"{self.prefix}tasks.{SHARED}"

    @property
    def results_queue(self) -> str:
        return f"{self.prefix}results"

    @property
    def tasks_dead_queue(self) -> str:
        return f"{self.prefix}tasks.dead"

    @property
    def results_dead_queue(self) -> str:
        return f"{self.prefix}results.dead"

    def retry_queue(self, delay_ms: int) -> str:
        """A retry delay queue, one per delay (taskcore.rabbitmq.topology)."""
        return f"{self.prefix}tasks.retry.{delay_ms}ms"


# Routing keys live inside the (prefixed) exchanges, so they carry no prefix.
def worker_routing_key(worker_id: str) -> str:
    return f"w.{worker_id}"


SHARED_ROUTING_KEY = SHARED
RESULTS_ROUTING_KEY = "results"
TASKS_DEAD_ROUTING_KEY = "tasks.dead"
RESULTS_DEAD_ROUTING_KEY = "results.dead"


def routing_key_for(worker_id: str) -> str:
    """Routing key of a task assigned to `worker_id` ("shared" means the shared queue)."""
    return SHARED_ROUTING_KEY if worker_id == SHARED else worker_routing_key(worker_id)


# Which namespace a name belongs to (infra/clean_state.py finds what stacks left behind with it).
# The names are those the methods and properties of Keys make, found by calling them, so that a key
# added to Keys is recognised without a list to keep up to date.
_VARIABLE = "\x00"


def _name_shapes() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Names without a prefix: the fixed ones, and (head, tail) around each variable part."""
    blank, fixed, variable = Keys(""), [], []
    for attribute, value in vars(Keys).items():
        if attribute.startswith("_"):
            continue
        if isinstance(value, property):
            fixed.append(getattr(blank, attribute))
        elif callable(value):
            head, _, tail = getattr(blank, attribute)(_VARIABLE).partition(_VARIABLE)
            variable.append((head, tail))
    return tuple(fixed), tuple(variable)


_FIXED, _SHAPED = _name_shapes()


def namespace_of(name: str) -> str | None:
    """The prefix of a Redis key or RabbitMQ name made by Keys ("" for the default namespace), or
    None for a name Keys does not make. Of several readings the shortest prefix wins: "t1:task:x" is
    task x of "t1:", though task id "x" could end in a fixed name too."""
    readings = [name[:-len(fixed)] for fixed in _FIXED if name.endswith(fixed)]
    for head, tail in _SHAPED:
        start = name.find(head)
        if start >= 0 and name.endswith(tail) and len(name) - len(tail) > start + len(head):
            readings.append(name[:start])
    return min(readings, key=len, default=None)

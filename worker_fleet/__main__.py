"""CLI.

    python -m worker_fleet --workers N --concurrency C [--id-prefix P] [--grace S]
        the fleet: N worker processes with ids P-0 .. P-(N-1) (P defaults to the short host name)
    python -m worker_fleet --worker-id ID --concurrency C [--grace S]
        one worker in the foreground (what the fleet runs in each slot)

Settings (RABBITMQ_URL, REDIS_URL, NAMESPACE, TASK_UNIT_SECONDS, MAX_ATTEMPTS, TASK_TIME_LIMIT,
HEARTBEAT_SECONDS, ...) come from the environment, as everywhere in the system.
"""

from __future__ import annotations

import argparse
import re
import sys

from taskcore.keys import SHARED
from taskcore.rabbitmq.amqp import AmqpBroker
from taskcore.settings import Settings, SettingsError
from worker_fleet.fleet import DEFAULT_CONCURRENCY, DEFAULT_WORKERS, Fleet, default_id_prefix
from worker_fleet.worker import DEFAULT_GRACE_SECONDS, Worker

WORKER_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _id(text: str) -> str:
    if not WORKER_ID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError("use letters, digits, '_', '.' and '-' only")
    if text == SHARED:
        raise argparse.ArgumentTypeError(f"{SHARED!r} names the shared queue, not a worker")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worker_fleet", description="The task worker fleet.")
    p.add_argument("--workers", type=_positive_int, default=DEFAULT_WORKERS,
                   help=f"worker processes to keep alive ({DEFAULT_WORKERS})")
    p.add_argument("--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY,
                   help=f"tasks each worker runs at once ({DEFAULT_CONCURRENCY})")
    p.add_argument("--id-prefix", type=_id, default=None, help="worker ids are PREFIX-0.. (short host name)")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_SECONDS,
                   help=f"seconds a stopping worker may finish its tasks ({DEFAULT_GRACE_SECONDS:g})")
    p.add_argument("--worker-id", type=_id, default=None, help="run one worker with this id, no fleet")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"worker_fleet: {error}", file=sys.stderr)
        return 2
    if args.worker_id is not None:
        worker = Worker(settings, AmqpBroker(settings), args.worker_id, args.concurrency, args.grace)
        worker.install_signal_handlers()
        worker.run()
        return 0
    return Fleet(args.workers, args.concurrency, args.id_prefix or default_id_prefix(), args.grace).run()


if __name__ == "__main__":
    sys.exit(main())

"""Creates the stack's own credentials on the local services, from RABBITMQ_URL and REDIS_URL (the
environment, else infra/local.env): a RabbitMQ user with permissions on its vhost only (by
rabbitmqctl, as the machine's administrator), and a Redis ACL user with a password (as Redis's
default user). Idempotent: a user that can already log in with its password is left as it is.

    python infra/provision.py            # `make run` and `make test` call it
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402
import redis  # noqa: E402
from dotenv import dotenv_values  # noqa: E402


def settings() -> dict[str, str | None]:
    # interpolate=False: a value is taken as written (a password may hold a `$`).
    return {**dotenv_values(ROOT / "infra" / "local.env", interpolate=False), **os.environ}


def rabbitmq_user(url: str) -> None:
    parts = urlsplit(url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    if not user or user == "guest":
        print("provision: RABBITMQ_URL names no user of its own (or guest): nothing to create")
        return
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
        return  # it logs in: nothing to do
    except pika.exceptions.AMQPError:
        pass

    def ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=check)

    # "--" ends rabbitmqctl's options: a password (or name) may begin with "-".
    if ctl("add_user", "--", user, password, check=False).returncode != 0:
        ctl("change_password", "--", user, password)
    ctl("add_vhost", "--", vhost, check=False)
    ctl("set_permissions", "-p", vhost, "--", user, ".*", ".*", ".*")
    print(f"provision: RabbitMQ user {user} with permissions on vhost {vhost}")


def redis_user(url: str, admin_url: str) -> None:
    parts = urlsplit(url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    if not user or user == "default" or not password:
        print("provision: REDIS_URL names no user of its own with a password: nothing to create")
        return
    try:
        redis.Redis.from_url(url).ping()
        return
    except redis.RedisError:
        pass
    # Every key (namespaces differ per stack and test run), every command but administration and
    # wiping the database.
    admin = redis.Redis.from_url(admin_url)
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], reset_passwords=True, keys=["*"],
                      channels=["*"], categories=["+@all", "-@admin"], commands=["-flushall", "-flushdb"])
    redis.Redis.from_url(url).ping()
    print(f"provision: Redis ACL user {user}")


def main() -> int:
    env = settings()
    rabbitmq_user(env["RABBITMQ_URL"])
    redis_user(env["REDIS_URL"], env.get("REDIS_ADMIN_URL", "redis://127.0.0.1:6379/0"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""infra/provision.py creates the stack's own RabbitMQ and Redis users, and the services refuse
whoever is not one of them: a wrong password, a RabbitMQ user without permission on the vhost."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
import redis

ROOT = Path(__file__).parents[2]


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True)


@pytest.fixture
def users() -> Iterator[tuple[str, str]]:
    """A fresh user name and password; both users are deleted afterwards."""
    name, password = f"test-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    yield name, password
    ctl("delete_user", name)
    redis.Redis().acl_deluser(name)


def urls(name: str, password: str) -> tuple[str, str]:
    return (f"amqp://{name}:{password}@127.0.0.1:5672/%2F", f"redis://{name}:{password}@127.0.0.1:6379/0")


def provision(rabbitmq_url: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RABBITMQ_URL": rabbitmq_url, "REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "infra/provision.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_provision_creates_users_that_work_and_is_idempotent(users: tuple[str, str]) -> None:
    rabbitmq_url, redis_url = urls(*users)
    first = provision(rabbitmq_url, redis_url)
    assert first.returncode == 0, first.stderr
    assert "RabbitMQ user" in first.stdout and "Redis ACL user" in first.stdout
    pika.BlockingConnection(pika.URLParameters(rabbitmq_url)).close()
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()  # a user of the stack, not an administrator
    again = provision(rabbitmq_url, redis_url)
    assert again.returncode == 0 and again.stdout == ""  # both log in already: nothing done


def test_a_password_that_begins_with_a_dash_is_provisioned(users: tuple[str, str]) -> None:
    # Random passwords begin with "-" one time in 64, which rabbitmqctl took for an option.
    rabbitmq_url, redis_url = urls(users[0], "-" + users[1])
    result = provision(rabbitmq_url, redis_url)
    assert result.returncode == 0, result.stderr
    pika.BlockingConnection(pika.URLParameters(rabbitmq_url)).close()
    assert redis.Redis.from_url(redis_url).ping()


def test_wrong_passwords_are_refused(users: tuple[str, str]) -> None:
    rabbitmq_url, redis_url = urls(*users)
    assert provision(rabbitmq_url, redis_url).returncode == 0
    wrong_rabbitmq, wrong_redis = urls(users[0], "not-the-password")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(wrong_rabbitmq))
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(wrong_redis).ping()


def test_rabbitmq_user_without_permission_on_the_vhost_is_refused(users: tuple[str, str]) -> None:
    name, password = users
    assert ctl("add_user", "--", name, password).returncode == 0  # a user, but no permissions anywhere
    with pytest.raises((pika.exceptions.ProbableAccessDeniedError, pika.exceptions.ConnectionClosedByBroker)):
        pika.BlockingConnection(pika.URLParameters(urls(name, password)[0]))

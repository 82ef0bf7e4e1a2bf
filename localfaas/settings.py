"""The host's settings: an env file (infra/local.env by default) under the process environment,
and how a setting's name matches a template parameter's."""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values


def parameter_key(name: str) -> str:
    """`RABBITMQ_URL`, `RabbitMqUrl` and `rabbitmq-url` name the same parameter."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def host_settings(env_file: Path | None) -> dict[str, str]:
    """The env file's values, each overridden by the process environment when set there. The
    file is read by python-dotenv, values as written (no `${VAR}` expansion: a password may hold a
    `$`); a bare `KEY` line without `=` sets nothing."""
    read = dotenv_values(env_file, interpolate=False) if env_file and env_file.exists() else {}
    settings = {key: value for key, value in read.items() if value is not None}
    return {key: os.environ.get(key, value) for key, value in settings.items()} | {
        key: os.environ[key] for key in ("RABBITMQ_URL", "AWS_REGION") if key in os.environ
    }

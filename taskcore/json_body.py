"""A request body read as JSON under the API's limits, and the parts of error details that quote a
refused value. The rules that give the values meaning are messages.py's."""

from __future__ import annotations

import json
import math
from typing import Any

from taskcore.errors import ValidationError

# Digits of a number in a request body. Every numeric field is far smaller; the cap keeps parsing
# linear (Python refuses str -> int past 4,300 digits, with advice meant for developers).
MAX_NUMBER_DIGITS = 100
# Characters of a refused value echoed back in an error's details.
MAX_ECHO_CHARS = 128


def bounded(body: bytes | str, max_bytes: int) -> bytes:
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > max_bytes:
        raise ValidationError("body_too_large", f"the body is over {max_bytes} bytes",
                              {"max_bytes": max_bytes, "bytes": len(raw)})
    return raw


def parse_json(raw: bytes) -> Any:
    """JSON text in UTF-8 (RFC 8259 §8.1), decoded strictly: json.loads(bytes) would also take
    UTF-16/32 and encoded surrogates. Integral numbers written with a fraction or exponent (10.0,
    1e3) are read as integers, so that they pass as integers wherever one is asked for."""
    try:
        # A byte order mark is no part of JSON; RFC 8259 lets a parser ignore one.
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise ValidationError("malformed_json", f"the body is not UTF-8 text (invalid byte at offset "
                              f"{error.start})", {"offset": error.start}) from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int,
                          parse_float=_parse_float)
    except RecursionError:
        # Python's parser recurses per nesting level: thousands of "[" exhaust the stack.
        raise ValidationError("payload_too_deep", "the JSON is nested too deeply to read") from None
    except ValidationError:
        raise
    except ValueError as error:
        raise ValidationError("malformed_json", f"the body is not valid JSON: {error}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _number_too_large(text: str) -> ValidationError:
    digits = MAX_NUMBER_DIGITS
    message = f"numbers must have at most {digits} digits (be below 1e{digits})"
    return ValidationError("number_too_large", message, {"max_digits": digits, "number": echo(text)})


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _number_too_large(text)
    return int(text)


def _parse_float(text: str) -> int | float:
    value = float(text)
    if not math.isfinite(value) or abs(value) >= 10.0 ** MAX_NUMBER_DIGITS:
        raise _number_too_large(text)  # 1e400 is inf to Python, a number to JSON
    return int(value) if value.is_integer() else value


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def echo(value: Any) -> Any:
    """A refused value as an error may quote it: scalars as they are (strings cut short), no
    containers (their type is said beside)."""
    if isinstance(value, str):
        return value if len(value) <= MAX_ECHO_CHARS else value[:MAX_ECHO_CHARS] + "..."
    return None if isinstance(value, dict | list) else value


def refused(name: str, value: Any) -> dict[str, Any]:
    """Details naming a refused field's value and its JSON type: {"complexity": 10.5, "got": "number"}."""
    return {name: echo(value), "got": json_type(value)}

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from taskcore.messages import (
    DEADLINE_MARGIN_MS,
    MessageError,
    Task,
    TaskResult,
    TaskSpec,
    ValidationError,
    caller_deadline,
    deadline_for,
    fingerprint,
    parse_generate,
    parse_submission,
    parse_task_id,
    parse_task_ids,
    parse_wait,
    validate_submission,
)
from taskcore.settings import Settings
from taskcore.states import TaskStatus

SETTINGS = Settings.from_env({}, max_batch=3, max_body_bytes=4096)
ROOMY = Settings.from_env({})  # the default limits (1 MiB)


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def code_of(raw: bytes | str, settings: Settings = SETTINGS) -> str:
    with pytest.raises(ValidationError) as caught:
        validate_submission(raw, settings)
    return caught.value.code


# Fingerprints ------------------------------------------------------------------------------------

def test_fingerprint_is_sha256_of_canonical_json() -> None:
    expected = hashlib.sha256(b'{"payload":{"a":1,"b":[1,2]},"type":"primes"}').hexdigest()
    assert fingerprint("primes", {"b": [1, 2], "a": 1}) == expected
    assert fingerprint("primes", {"a": 1, "b": [1, 2]}) == expected


def test_fingerprint_separates_types_and_payloads() -> None:
    assert fingerprint("primes", {"n": 5}) != fingerprint("primes", {"n": 6})
    assert fingerprint("primes", {"n": 5}) != fingerprint("hash", {"n": 5})


def test_normalised_payloads_share_a_fingerprint() -> None:
    [a] = validate_submission(body({"type": "hash", "payload": {"data": "x"}}), SETTINGS)
    [b] = validate_submission(body({"type": "hash", "payload": {"data": "x", "rounds": 1}}), SETTINGS)
    [c] = validate_submission(body({"type": "sleep", "payload": {"seconds": 2.0}}), SETTINGS)
    assert a.payload == {"data": "x", "rounds": 1}
    assert a.fingerprint == b.fingerprint
    assert c.payload == {"seconds": 2}


# Valid submissions -------------------------------------------------------------------------------

def test_single_task_with_defaults() -> None:
    sub = parse_submission(body({"type": "primes", "payload": {"n": 50000}}), SETTINGS)
    assert not sub.batch
    assert sub.tasks == [TaskSpec("primes", {"n": 50000}, complexity=1, task_id=None, cache=True)]


def test_batch_with_all_fields() -> None:
    sub = parse_submission(body({"tasks": [
        {"type": "primes", "payload": {"n": 10}, "complexity": 10, "task_id": "A-b_c.d:1", "cache": False},
        {"type": "fail"},
        {"type": "sleep", "payload": {"seconds": 0.25}},
    ]}), SETTINGS)
    assert sub.batch
    assert [t.type for t in sub.tasks] == ["primes", "fail", "sleep"]
    assert sub.tasks[0] == TaskSpec("primes", {"n": 10}, 10, "A-b_c.d:1", False)
    assert sub.tasks[1].payload == {"message": "task failed as requested"}
    assert sub.tasks[2].task_id is None


def test_str_body_is_accepted() -> None:
    assert validate_submission('{"type": "sleep"}', SETTINGS)[0].payload == {"seconds": 0}


# Every error code --------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "code"), [
    (b"{not json", "malformed_json"),
    (b"", "malformed_json"),
    (b"\xff\xfe", "malformed_json"),
    (b'{"type": "sleep", "payload": {"seconds": NaN}}', "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"primes"', "not_an_object"),
    (body({"tasks": [{"type": "sleep"}, 5]}), "not_an_object"),
    (body({"tasks": []}), "empty_batch"),
    (body({"tasks": [{"type": "sleep"}] * 4}), "batch_too_large"),
    (body({"tasks": {"type": "sleep"}}), "invalid_batch"),
    (body({"tasks": [], "extra": 1}), "unknown_field"),
    (body({"type": "sleep", "priority": 3}), "unknown_field"),
    (body({"type": "teleport"}), "unknown_type"),
    (body({"payload": {}}), "unknown_type"),
    (body({"type": 5}), "unknown_type"),
    (body({"type": "sleep", "complexity": 0}), "invalid_complexity"),
    (body({"type": "sleep", "complexity": 11}), "invalid_complexity"),
    (body({"type": "sleep", "complexity": 2.5}), "invalid_complexity"),
    (body({"type": "sleep", "complexity": "3"}), "invalid_complexity"),
    (body({"type": "sleep", "complexity": True}), "invalid_complexity"),
    (body({"type": "sleep", "task_id": ""}), "invalid_task_id"),
    (body({"type": "sleep", "task_id": "x" * 129}), "invalid_task_id"),
    (body({"type": "sleep", "task_id": "has space"}), "invalid_task_id"),
    (body({"type": "sleep", "task_id": None}), "invalid_task_id"),  # absent means "assign one"; null is no id
    (body({"type": "sleep", "task_id": "a/b"}), "invalid_task_id"),
    (body({"type": "sleep", "task_id": 12}), "invalid_task_id"),
    (body({"type": "sleep", "cache": "yes"}), "invalid_cache"),
    (body({"type": "sleep", "cache": 1}), "invalid_cache"),
    (body({"type": "primes", "payload": []}), "invalid_payload"),
    (body({"type": "primes", "payload": {}}), "invalid_payload"),
    (body({"type": "primes", "payload": {"n": "5"}}), "invalid_payload"),
    (body({"type": "primes", "payload": {"n": 0}}), "invalid_payload"),
    (body({"type": "primes", "payload": {"n": 5_000_001}}), "invalid_payload"),
    (body({"type": "primes", "payload": {"n": True}}), "invalid_payload"),
    (body({"type": "primes", "payload": {"n": 5, "m": 1}}), "invalid_payload"),
    (body({"type": "hash", "payload": {}}), "invalid_payload"),
    (body({"type": "hash", "payload": {"data": 5}}), "invalid_payload"),
    (body({"type": "hash", "payload": {"data": "x", "rounds": 0}}), "invalid_payload"),
    (body({"type": "hash", "payload": {"data": "x", "rounds": 100_001}}), "invalid_payload"),
    (body({"type": "sleep", "payload": {"seconds": -1}}), "invalid_payload"),
    (body({"type": "sleep", "payload": {"seconds": 601}}), "invalid_payload"),
    (body({"type": "sleep", "payload": {"seconds": "1"}}), "invalid_payload"),
    (body({"type": "fail", "payload": {"message": 3}}), "invalid_payload"),
    (body({"type": "sleep", "payload": {"a": [[[[[[[[1]]]]]]]]}}), "payload_too_deep"),
    (b'{"type": "sleep", "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "payload_too_deep"),
])
def test_error_codes(raw: bytes, code: str) -> None:
    settings = Settings.from_env({}, max_batch=3) if len(raw) > 4096 else SETTINGS
    assert code_of(raw, settings) == code


def test_body_too_large() -> None:
    raw = body({"type": "hash", "payload": {"data": "x" * 5000}})
    with pytest.raises(ValidationError) as caught:
        validate_submission(raw, SETTINGS)
    assert caught.value.code == "body_too_large"
    assert caught.value.details == {"max_bytes": 4096, "bytes": len(raw)}


def refusal(raw: bytes | str, settings: Settings = SETTINGS) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validate_submission(raw, settings)
    return caught.value


# Input handling: bytes, numbers, what a refusal says --------------------------------------------

@pytest.mark.parametrize("raw", [
    b'{"type": "hash", "payload": {"data": "\xff\xfe"}}',  # not UTF-8 at all
    b'{"type": "hash", "payload": {"data": "\xed\xa0\x80"}}',  # UTF-8-encoded surrogate (CESU)
    b'{"type": "hash", "payload": {"data": "\xc3"}}',  # truncated sequence
    '{"type": "sleep"}'.encode("utf-16"),  # JSON travels as UTF-8 (RFC 8259 8.1)
])
def test_a_body_that_is_not_utf8_is_malformed_json(raw: bytes) -> None:
    error = refusal(raw)
    assert error.code == "malformed_json"
    assert "UTF-8" in error.message and isinstance(error.details["offset"], int)


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    assert validate_submission(b"\xef\xbb\xbf" + body({"type": "sleep"}), SETTINGS)[0].type == "sleep"


def test_a_number_of_5000_digits_is_refused_in_the_projects_terms() -> None:
    for number in ("1" * 5000, "-" + "9" * 5000, "1e400", "-1e400", "1" + "0" * 100 + ".0"):
        error = refusal(f'{{"type": "primes", "payload": {{"n": {number}}}}}'.encode(), ROOMY)
        assert error.code == "number_too_large", number[:10]
        assert error.details["max_digits"] == 100
        assert "sys." not in error.message and "digits" in error.message
        assert len(error.details["number"]) <= 131  # quoted, cut short
    # 100 digits are read; the field's own rule then refuses them.
    error = refusal(f'{{"type": "primes", "payload": {{"n": {"9" * 100}}}}}'.encode())
    assert error.code == "invalid_payload" and error.details["field"] == "n"


def test_integral_floats_are_integers() -> None:
    [spec] = validate_submission(b'{"type": "primes", "payload": {"n": 10.0}, "complexity": 2.0}', SETTINGS)
    assert spec.payload == {"n": 10} and type(spec.payload["n"]) is int
    assert spec.complexity == 2 and type(spec.complexity) is int
    assert spec.fingerprint == validate_submission(body({"type": "primes", "payload": {"n": 10}}),
                                                   SETTINGS)[0].fingerprint
    [spec] = validate_submission(b'{"type": "hash", "payload": {"data": "x", "rounds": 1e3}}', SETTINGS)
    assert spec.payload["rounds"] == 1000
    assert parse_generate(b'{"count": 2.0, "seed": -7.0}', SETTINGS, 100) == (2, -7)


def test_fractions_are_refused_saying_what_was_sent() -> None:
    error = refusal(b'{"type": "primes", "payload": {"n": 10.5}}')
    assert error.code == "invalid_payload" and "integer" in error.message
    assert error.details == {"field": "n", "value": 10.5, "got": "number"}
    error = refusal(b'{"type": "primes", "payload": {"n": 10}, "complexity": 2.5}')
    assert error.code == "invalid_complexity"
    assert error.details == {"complexity": 2.5, "got": "number", "min": 1, "max": 10}


@pytest.mark.parametrize(("task", "details"), [
    ({"type": 5}, {"type": 5, "got": "integer"}),
    ({"type": None}, {"type": None, "got": "null"}),
    ({"type": ["primes"]}, {"type": None, "got": "array"}),
    ({"type": "teleport"}, {"type": "teleport", "got": "string"}),
    ({"type": "x" * 1000}, {"type": "x" * 128 + "...", "got": "string"}),
    ({"payload": {}}, {"type": None, "got": "missing"}),
])
def test_unknown_type_says_what_was_sent(task: dict[str, Any], details: dict[str, Any]) -> None:
    error = refusal(body(task))
    assert error.code == "unknown_type"
    assert error.details == {**details, "known": ["fail", "hash", "primes", "sleep"]}


def test_parse_task_id_is_the_rule_of_submitted_ids() -> None:
    assert parse_task_id("A-b_c.d:1") == "A-b_c.d:1"
    with pytest.raises(ValidationError) as caught:
        parse_task_id("a b")
    assert caught.value.details == {"task_id": "a b", "got": "string"}
    for bad in ("a b", "", "x" * 129, "a/b", "a%20b", "é", None, 5):
        with pytest.raises(ValidationError) as caught:
            parse_task_id(bad)
        assert caught.value.code == "invalid_task_id"
        # ... the same answer as for the id in a submission
        submitted = refusal(body({"type": "sleep", "task_id": bad}))
        assert (submitted.code, submitted.details) == (caught.value.code, caught.value.details)


def test_hash_data_limit_is_65536_characters_of_unicode() -> None:
    roomy = ROOMY
    validate_submission(body({"type": "hash", "payload": {"data": "é" * 65536}}), roomy)
    assert code_of(body({"type": "hash", "payload": {"data": "x" * 65537}}), roomy) == "invalid_payload"
    # A lone surrogate, as the JSON escape \ud800 gives one, is no text: refused, not a 500.
    assert code_of(b'{"type": "hash", "payload": {"data": "\\ud800"}}', roomy) == "invalid_payload"
    assert code_of(b'{"type": "fail", "payload": {"message": "a\\udfff"}}', roomy) == "invalid_payload"


def test_depth_eight_is_allowed_but_payload_schema_still_applies() -> None:
    deep8 = {"a": [[[[[[[1]]]]]]]}  # eight levels of containers including the payload itself
    assert code_of(body({"type": "sleep", "payload": deep8})) == "invalid_payload"


def test_batch_errors_name_the_index() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_submission(body({"tasks": [{"type": "sleep"}, {"type": "primes", "payload": {"n": -1}}]}),
                            SETTINGS)
    assert caught.value.code == "invalid_payload"
    assert caught.value.details["index"] == 1
    assert caught.value.details["field"] == "n"


# Messages ----------------------------------------------------------------------------------------

def test_task_round_trip() -> None:
    spec = TaskSpec("primes", {"n": 10}, 3, "id-1", True)
    task = Task.from_spec(spec, submitted_at=1_700_000_000_000)
    assert task.fingerprint == spec.fingerprint
    assert json.loads(task.to_json()) == {
        "type": "primes", "payload": {"n": 10}, "complexity": 3, "task_id": "id-1", "cache": True,
        "fingerprint": spec.fingerprint, "submitted_at": 1_700_000_000_000, "attempt": 0}
    assert Task.from_json(task.to_json()) == task


def test_task_needs_an_id() -> None:
    with pytest.raises(ValueError):
        Task.from_spec(TaskSpec("sleep", {"seconds": 0}), 0)


@pytest.mark.parametrize("raw", [b"nope", b"[]", b'{"type": "primes"}',
                                 b'{"type":"teleport","payload":{},"complexity":1,"task_id":"a","cache":true,'
                                 b'"fingerprint":"f","submitted_at":1,"attempt":0}',
                                 b'{"type":"primes","payload":{"n":-1},"complexity":1,"task_id":"a",'
                                 b'"cache":true,"fingerprint":"f","submitted_at":1,"attempt":0}'])
def test_unparseable_task_messages(raw: bytes) -> None:
    with pytest.raises(MessageError):
        Task.from_json(raw)


def test_result_round_trip_and_shape() -> None:
    ok = TaskResult("a", "fp", TaskStatus.SUCCEEDED, "w1", 1, 2, 1, result={"slept": 1})
    assert json.loads(ok.to_json()) == {"task_id": "a", "fingerprint": "fp", "status": "succeeded",
                                        "result": {"slept": 1}, "worker_id": "w1", "started_at": 1,
                                        "finished_at": 2, "attempt": 1}
    assert TaskResult.from_json(ok.to_json()) == ok
    assert TaskResult.from_json(ok.to_json()).status is TaskStatus.SUCCEEDED  # the word read back as a member
    bad = TaskResult("b", "fp", TaskStatus.FAILED, "w1", 1, 2, 3, error="TaskFailed: boom")
    assert "result" not in json.loads(bad.to_json())
    assert TaskResult.from_json(bad.to_json()) == bad
    # A plain word (as the worker fleet may pass) makes the same message.
    assert TaskResult("b", "fp", "failed", "w1", 1, 2, 3, error="TaskFailed: boom").to_json() == bad.to_json()


@pytest.mark.parametrize("raw", [b"{}", b'{"task_id":"a","fingerprint":"f","status":"done","worker_id":"w",'
                                       b'"started_at":1,"finished_at":2,"attempt":1}',
                                 b'{"task_id":"a","fingerprint":"f","status":"failed","worker_id":"w",'
                                 b'"started_at":1,"finished_at":2,"attempt":1}'])
def test_unparseable_result_messages(raw: bytes) -> None:
    with pytest.raises(MessageError):
        TaskResult.from_json(raw)


@pytest.mark.parametrize(("field", "value"), [("complexity", 11), ("complexity", 0), ("task_id", "a b"),
                                              ("attempt", "1"), ("cache", 1)])
def test_task_message_fields_are_checked(field: str, value: object) -> None:
    data = json.loads(Task.from_spec(TaskSpec("sleep", {"seconds": 0}, 1, "a"), 1).to_json())
    data[field] = value
    with pytest.raises(MessageError):
        Task.from_json(json.dumps(data))


def test_parse_wait() -> None:
    assert parse_wait(None, 20) == 0 and parse_wait({}, 20) == 0
    assert parse_wait({"wait": "2.5"}, 20) == 2.5 and parse_wait({"wait": "20"}, 20) == 20
    for bad in ("-1", "20.5", "nan", "soon", ""):
        with pytest.raises(ValidationError) as caught:
            parse_wait({"wait": bad}, 20)
        assert caught.value.code == "invalid_wait"


def test_parse_task_ids() -> None:
    assert parse_task_ids({"ids": "b,a,b"}, 3) == ["b", "a"]
    for bad in ({}, {"ids": ""}, {"ids": "a,,b"}, {"ids": "a b"}, {"ids": "a,b,c,d"}, {"ids": "x" * 129}):
        with pytest.raises(ValidationError) as caught:
            parse_task_ids(bad, 3)
        assert caught.value.code == "invalid_ids"


def test_parse_generate() -> None:
    assert parse_generate(b"", SETTINGS, 100) == (10, 0)
    with pytest.raises(ValidationError) as whitespace:  # schemathesis found it answered 202
        parse_generate(b" \n", SETTINGS, 100)
    assert whitespace.value.code == "malformed_json"
    assert parse_generate(b'{"count": 100, "seed": -3}', SETTINGS, 100) == (100, -3)
    cases = [(b"[1]", "not_an_object"), (b"{", "malformed_json"), (b'{"count": 1, "x": 2}', "unknown_field"),
             (b'{"count": 0}', "invalid_count"), (b'{"count": 101}', "invalid_count"),
             (b'{"count": true}', "invalid_count"), (b'{"seed": "1"}', "invalid_seed")]
    for raw, code in cases:
        with pytest.raises(ValidationError) as caught:
            parse_generate(raw, SETTINGS, 100)
        assert caught.value.code == code, raw


def test_the_supervisor_works_to_the_callers_deadline_but_never_past_its_own_wait() -> None:
    settings = Settings.from_env({}, supervisor_timeout=10.0)
    own = deadline_for(1_000_000, settings)
    assert own == 1_000_000 + 10_000 - DEADLINE_MARGIN_MS
    assert caller_deadline(str(1_000_500), 1_000_000, settings) == 1_000_500
    assert caller_deadline(str(own + 60_000), 1_000_000, settings) == own  # no caller buys more time
    assert caller_deadline(None, 1_000_000, settings) == own


def test_a_deadline_header_that_is_garbage_or_already_passed_is_refused() -> None:
    settings = Settings.from_env({}, supervisor_timeout=10.0)
    for garbage in ("", "soon", "-5", "1e9", "١٢٣", "9" * 16):
        with pytest.raises(ValidationError) as caught:
            caller_deadline(garbage, 1_000_000, settings)
        assert caught.value.code == "invalid_deadline", garbage
    for passed in ("5", "1000000"):  # long gone, and due this very ms
        with pytest.raises(ValidationError) as caught:
            caller_deadline(passed, 1_000_000, settings)
        assert caught.value.code == "deadline_passed"
        assert caught.value.details["late_by_ms"] == 1_000_000 - int(passed)

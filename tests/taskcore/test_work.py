from __future__ import annotations

import hashlib

import pytest

from taskcore import work
from taskcore.registry import TASK_TYPES, execute


@pytest.mark.parametrize(("n", "count"), [(0, 0), (1, 0), (2, 1), (3, 2), (10, 4), (100, 25), (1000, 168),
                                          (7919, 1000), (1_000_000, 78_498), (5_000_000, 348_513)])
def test_primes_counts(n: int, count: int) -> None:
    assert work.primes(n) == count


def test_hash_rounds() -> None:
    assert work.hash_rounds("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    twice = hashlib.sha256(hashlib.sha256(b"abc").digest()).hexdigest()
    assert work.hash_rounds("abc", 2) == twice
    assert work.hash_rounds("é", 1) == hashlib.sha256("é".encode()).hexdigest()


def test_sleep_reports_and_pauses() -> None:
    pauses: list[float] = []
    assert work.sleep(1.5, pause=pauses.append) == {"slept": 1.5}
    assert pauses == [1.5]
    assert work.sleep(0, pause=pauses.append) == {"slept": 0}
    assert pauses == [1.5]


def test_fail_raises_task_failed() -> None:
    with pytest.raises(work.TaskFailed, match="boom"):
        work.fail("boom")


def test_execute_dispatches_by_type() -> None:
    assert set(TASK_TYPES) == {"primes", "hash", "sleep", "fail"}
    assert execute("primes", {"n": 100}) == 25
    assert execute("hash", {"data": "abc", "rounds": 1}).startswith("ba7816bf")
    assert execute("sleep", {"seconds": 0}) == {"slept": 0}
    with pytest.raises(work.TaskFailed, match="nope"):
        execute("fail", {"message": "nope"})
    with pytest.raises(work.TaskFailed, match="unknown task type"):
        execute("teleport", {})

"""Task generation for /generate and the load test: reproducible, varied, all valid."""

from __future__ import annotations

from taskcore.producer import generate_tasks


def test_same_seed_same_tasks_and_other_seed_other_tasks() -> None:
    assert generate_tasks(50, seed=3) == generate_tasks(50, seed=3)
    assert generate_tasks(50, seed=3) != generate_tasks(50, seed=4)


def test_tasks_vary_and_are_distinct() -> None:
    tasks = generate_tasks(200, seed=1)
    assert {t.type for t in tasks} == {"primes", "hash", "sleep"}
    assert len({t.complexity for t in tasks}) == 5
    assert len({t.fingerprint for t in tasks}) >= 190  # repeats are the caller's choice, not ours


def test_failures_only_when_asked() -> None:
    assert "fail" in {t.type for t in generate_tasks(100, seed=1, include_failures=True)}

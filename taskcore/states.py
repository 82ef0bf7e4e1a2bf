"""The closed sets of words the task system decides and answers with, as `str` enums (like arq's
JobStatus): task states, what admission decided, how the cache served a task, what MARK_RUNNING and
COMPLETE answered.

A member is its string: it compares and hashes equal to it, and JSON and redis-py write its value,
so records, replies, stats and the Lua scripts (taskcore/scripts.py, which return and store the
same words) are unchanged. Turn a word read back into a member with the class (`TaskStatus(word)`,
ValueError for anything else) where it crosses into Python.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """A task's state (docs/architecture.md §5): queued -> running -> succeeded | failed."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


# The states a task ends in; a result message carries one of them.
FINAL_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED})


class Admitted(StrEnum):
    """What admission (ADMIT) decided for one task."""

    DISPATCH = "dispatch"  # it leads its fingerprint (or bypasses the cache): publish it
    HIT = "hit"  # the cache had its result: succeeded at once
    COALESCED = "coalesced"  # it follows the task now computing the same work
    EXISTS = "exists"  # a task with its id exists: nothing admitted


class CacheOutcome(StrEnum):
    """How the cache served a task: the record's and the answer's `cache`."""

    HIT = "hit"
    MISS = "miss"  # computed, and its result cached
    COALESCED = "coalesced"
    BYPASS = "bypass"  # `cache: false`: computed, never read from nor written to the cache


class RunVerdict(StrEnum):
    """MARK_RUNNING's answer when a worker starts an attempt."""

    RUNNING = "running"  # run it
    FINAL = "final"  # already done: ack without running again
    MISSING = "missing"  # no record (admission undone, or expired): drop it
    POISON = "poison"  # delivered again past the delivery limit (classic queues): dead-letter it


class Completion(StrEnum):
    """COMPLETE's answer for one result."""

    COMPLETED = "completed"
    DUPLICATE = "duplicate"  # the task was already final: nothing changed
    UNKNOWN = "unknown"  # no record: nothing stored
    UNKNOWN_LEADER = "unknown_leader"  # no record, but its id held the claim: followers and cache got it

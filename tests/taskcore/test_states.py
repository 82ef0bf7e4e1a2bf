"""The str enums of taskcore.states: each member is its word everywhere a word goes (JSON, Redis,
f-strings, sets of plain strings), and the words are exactly those the Lua scripts use."""

from __future__ import annotations

import json
import re

import pytest

from taskcore import scripts
from taskcore.states import FINAL_STATUSES, Admitted, CacheOutcome, Completion, RunVerdict, TaskStatus


def lua_words(script: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, script))


def test_a_member_is_its_word() -> None:
    assert json.dumps({"status": TaskStatus.FAILED, CacheOutcome.HIT: 1}) == '{"status": "failed", "hit": 1}'
    assert f"cache_{CacheOutcome.BYPASS}" == "cache_bypass" and str(RunVerdict.FINAL) == "final"
    assert "succeeded" in FINAL_STATUSES and TaskStatus("queued") is TaskStatus.QUEUED
    assert {"exists": 1}[Admitted.EXISTS] == 1  # hashes as its word: looks up plain-string keys
    with pytest.raises(ValueError):
        TaskStatus("done")


def test_only_succeeded_and_failed_are_final() -> None:
    assert [s for s in TaskStatus if s.final] == [TaskStatus.SUCCEEDED, TaskStatus.FAILED]


def test_the_enums_hold_the_words_of_the_lua_scripts() -> None:
    # Lua cannot import them: this is what keeps the two vocabularies one.
    assert lua_words(scripts.ADMIT, r"\boutcome = '(\w+)'") == set(Admitted)
    assert lua_words(scripts.ADMIT, r"\b(?:cache|outcome_cache) = '(\w+)'") == set(CacheOutcome)
    assert lua_words(scripts.ADMIT, r"\bstatus = '(\w+)'") == {TaskStatus.QUEUED, TaskStatus.SUCCEEDED}
    assert lua_words(scripts.COMPLETE, r"out\[#out \+ 1\] = '(\w+)'") == set(Completion)
    assert lua_words(scripts.MARK_RUNNING, r"return '(\w+)'") == set(RunVerdict)

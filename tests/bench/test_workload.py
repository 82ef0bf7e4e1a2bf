"""The load test's workload (bench/workload.py): generated tasks with their share of repeats, and
replayed lists. Pure: no services needed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import workload


def _key(task: dict[str, Any]) -> str:
    return json.dumps(task, sort_keys=True)


def test_make_tasks_is_reproducible_with_the_repeat_share() -> None:
    from taskcore.producer import generate_tasks

    tasks = workload.make_tasks(200, seed=7, repeat_share=0.2)
    assert len(tasks) == 200
    assert tasks == workload.make_tasks(200, seed=7, repeat_share=0.2)
    assert tasks != workload.make_tasks(200, seed=8, repeat_share=0.2)
    originals = [{"type": s.type, "payload": s.payload, "complexity": s.complexity}
                 for s in generate_tasks(160, 7)]
    # The originals keep their order; the 40 others are copies of an original, after it.
    remaining = [_key(t) for t in tasks]
    positions = []
    for original in originals:
        position = remaining.index(_key(original), positions[-1] + 1 if positions else 0)
        positions.append(position)
    repeats = [i for i in range(200) if i not in set(positions)]
    assert len(repeats) == 40
    for i in repeats:
        first = min(j for j, t in enumerate(tasks) if _key(t) == _key(tasks[i]))
        assert first < i, "a repeat comes after its original"
    assert all(set(t) == {"type", "payload", "complexity"} for t in tasks)
    tasks[0]["payload"]["changed"] = True  # copies, not shared objects
    assert all("changed" not in t["payload"] for t in tasks[1:])


def test_make_tasks_edges() -> None:
    assert workload.make_tasks(0, 1) == []
    assert len(workload.make_tasks(10, 1, repeat_share=0)) == 10
    everything_repeated = workload.make_tasks(5, 1, repeat_share=1)
    assert len({_key(t) for t in everything_repeated}) == 1
    assert any(t["type"] == "fail" for t in workload.make_tasks(100, 1, include_failures=True))
    with pytest.raises(ValueError):
        workload.make_tasks(10, 1, repeat_share=1.5)


def test_load_tasks(tmp_path: Any) -> None:
    tasks = [{"type": "hash", "payload": {"data": "x"}}]
    (tmp_path / "a.json").write_text(json.dumps(tasks))
    (tmp_path / "b.json").write_text(json.dumps({"tasks": tasks}))
    (tmp_path / "c.json").write_text(json.dumps([1, 2]))
    assert workload.load_tasks(tmp_path / "a.json") == tasks
    assert workload.load_tasks(tmp_path / "b.json") == tasks
    with pytest.raises(ValueError):
        workload.load_tasks(tmp_path / "c.json")

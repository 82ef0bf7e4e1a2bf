"""The load test's workload: generated tasks with a share of repeats (cache hits, coalescing),
or a replayed list. Pure: the same arguments give the same tasks."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any


def make_tasks(count: int, seed: int, repeat_share: float = 0.2,
               include_failures: bool = False) -> list[dict[str, Any]]:
    """`count` tasks from `seed`: round(count x repeat_share) of them are copies of earlier ones
    (same type, payload and complexity), placed at random after their original, so they meet the
    original still running (coalesced) or finished (cache hit). The same arguments give the same
    list. The originals are `taskcore.producer.generate_tasks(unique, seed)`."""
    from taskcore.producer import generate_tasks

    if count < 0:
        raise ValueError("count must not be negative")
    if not 0 <= repeat_share <= 1:
        raise ValueError("repeat_share must be from 0 to 1")
    repeats = round(count * repeat_share)
    unique = count - repeats
    if count and unique == 0:
        unique, repeats = 1, count - 1
    originals = [{"type": s.type, "payload": s.payload, "complexity": s.complexity}
                 for s in generate_tasks(unique, seed, include_failures)]
    rng = random.Random(seed * 1_000_003 + 17)
    keyed: list[tuple[float, int, dict[str, Any]]] = [(float(i), 0, task) for i, task in enumerate(originals)]
    for _ in range(repeats):
        k = rng.randrange(unique)
        # Strictly after the original (ties sort originals first), anywhere up to the end.
        keyed.append((k + rng.random() * (unique - k), 1, originals[k]))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [copy.deepcopy(task) for _, _, task in keyed]


def load_tasks(path: str | Path) -> list[dict[str, Any]]:
    """Tasks to replay: a JSON list of task objects (or {"tasks": [...]}), sent as they are."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        data = data["tasks"]
    if not isinstance(data, list) or not all(isinstance(task, dict) for task in data):
        raise ValueError(f"{path}: expected a JSON list of task objects")
    return data

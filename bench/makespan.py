"""Makespan against the ideal: how long a run took from its first submission to its last task's end,
beside the least it could have taken. Pure functions; bench/stats.py puts them in a run's summary and
bench/schedule.py compares dispatch modes with them.

The ideal of a run is its simulated work spread evenly over the slots: the sum of complexity x
TASK_UNIT_SECONDS over the tasks a worker computed (cache hits and coalesced copies compute nothing;
a task counts once, however many attempts it took), divided by the slots. No schedule beats it, and
a schedule that keeps every slot busy until the work runs out comes within a task's length of it."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# What a worker computed: a cache miss, or a task sent with "cache": false.
COMPUTED = ("miss", "bypass")


@dataclass(frozen=True)
class Makespan:
    makespan_s: float  # first submission to the last task's end
    work_s: float  # simulated work of the computed tasks
    slots: float  # the slots that shared it (a slot at half speed counts one half)
    ideal_s: float  # work_s / slots

    @property
    def ratio(self) -> float | None:
        return self.makespan_s / self.ideal_s if self.ideal_s > 0 else None

    def to_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {"makespan_s": round(self.makespan_s, 3), "work_s": round(self.work_s, 3),
                "slots": self.slots, "ideal_s": round(self.ideal_s, 3),
                "ratio": round(ratio, 4) if ratio is not None else None}


def simulated_work(complexities: Iterable[int], unit_seconds: float) -> float:
    return sum(complexities) * unit_seconds


def measure(makespan_s: float, complexities: Iterable[int], unit_seconds: float, slots: float) -> Makespan:
    work = simulated_work(complexities, unit_seconds)
    return Makespan(makespan_s, work, slots, work / slots if slots > 0 else 0.0)


def slots_of(workers_report: dict[str, Any] | None) -> int:
    """The slots of the live workers in a GET /workers answer (0 when it is missing)."""
    workers: Sequence[dict[str, Any]] = (workers_report or {}).get("workers") or []
    total = 0
    for worker in workers:
        try:
            total += int(worker.get("concurrency") or 0)
        except (TypeError, ValueError):
            continue
    return total


def list_schedule(durations: Sequence[float], speeds: Sequence[float]) -> float:
    """The makespan when every slot, the moment it is free, starts the next duration of the list
    (a slot of speed s takes d / s): what a perfect first-in-first-out dispatcher reaches with every
    task queued at once. Sorted longest first, the list gives the longest-first schedule."""
    free = [(0.0, index) for index in range(len(speeds))]
    heapq.heapify(free)
    end = 0.0
    for duration in durations:
        at, index = heapq.heappop(free)
        at += duration / speeds[index]
        end = max(end, at)
        heapq.heappush(free, (at, index))
    return end

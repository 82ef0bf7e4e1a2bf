"""bench/schedule.py's mixes and ideals (the runs themselves are `make bench-schedule`'s)."""

from __future__ import annotations

import pytest

from bench import schedule
from bench.makespan import list_schedule


def test_every_mix_is_100_distinct_computed_tasks_the_same_each_time() -> None:
    for mix in schedule.MIXES:
        tasks = schedule.tasks_for(mix)
        assert len(tasks) == 100 and all(task["cache"] is False for task in tasks)
        assert tasks == schedule.tasks_for(mix)
    spread = [task["complexity"] for task in schedule.tasks_for("spread")]
    assert min(spread) == 1 and max(spread) == 10 and len(set(spread)) == 10
    assert sorted(task["complexity"] for task in schedule.tasks_for("one-long")) == [1] * 99 + [10]
    assert [t["complexity"] for t in schedule.tasks_for("slow")] == [
        t["complexity"] for t in schedule.tasks_for("default")]


def test_the_ideal_counts_the_capacity_each_mix_has() -> None:
    assert schedule.ideal_seconds("default", 80.0) == 10.0  # 8 slots
    assert schedule.ideal_seconds("slow", 70.0) == 10.0  # 6 slots + 2 at half speed
    # 3 workers (6 slots) until halfway to the full fleet's ideal (5 s for 80 s of work), then 8.
    assert schedule.join_at(80.0) == 5.0
    assert schedule.ideal_seconds("joins", 80.0) == pytest.approx(5.0 + (80.0 - 30.0) / 8)


def test_the_bounds_of_a_perfect_dispatcher() -> None:
    # Fifteen tasks of 1 s, then one of 4 s, on 8 slots: the ideal is 19 / 8 = 2.375 s. First in,
    # first out, the long one starts at 1 s (after 8 of the short ones) and ends at 5 s; longest
    # first, it starts at once and the short ones end at 3 s on the other 7 slots: 4 s.
    tasks = [{"complexity": 1}] * 15 + [{"complexity": 4}]
    assert schedule.bounds("default", tasks, 1.0) == {"fifo_bound": round(5 / 2.375, 4),
                                                      "longest_first_bound": round(4 / 2.375, 4)}
    assert schedule.bounds("joins", tasks, 1.0) == {"fifo_bound": None, "longest_first_bound": None}
    assert list_schedule([2.0, 1.0], [0.5, 1.0]) == 4.0  # a slot at half speed takes twice as long

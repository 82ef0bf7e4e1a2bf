"""The load generator's lanes of tasks waiting for their result (bench/lanes.py), on their own."""

from __future__ import annotations

import asyncio

from bench.lanes import Lanes


def _lanes(poll_batch: int = 1, ended: set[int] | None = None) -> Lanes:
    done = ended if ended is not None else set()
    return Lanes(poll_batch, lambda index: index not in done)


def test_final_replies_go_to_the_quick_lane_and_others_in_line_oldest_first() -> None:
    async def scenario() -> None:
        lanes = _lanes()
        lanes.submitted(0, "a", final=False)
        lanes.submitted(1, "b", final=True)
        lanes.submitted(2, "c", final=False)
        assert await lanes.take(quick=True) == [1]
        assert await lanes.take(quick=False) == [0]
        assert await lanes.take(quick=False) == [2]
        assert lanes.quick.empty() and lanes.line.empty()

    asyncio.run(scenario())


def test_a_long_poll_that_ran_out_goes_to_the_back_one_back_from_the_quick_lane_keeps_its_place() -> None:
    async def scenario() -> None:
        lanes = _lanes()
        for index in range(3):
            lanes.submitted(index, str(index), final=False)
        first = await lanes.take(quick=False)
        lanes.to_line(first[0], back=True)  # its wait ran out
        assert [await lanes.take(quick=False) for _ in range(3)] == [[1], [2], [0]]

        lanes = _lanes()
        for index in range(3):
            lanes.submitted(index, str(index), final=False)
        taken = await lanes.take(quick=False)
        lanes.to_line(taken[0])  # not final in the quick lane: back to the place it had
        assert await lanes.take(quick=False) == [0]
        lanes.to_line(1)  # already waiting in line: not queued twice
        assert [await lanes.take(quick=False) for _ in range(2)] == [[1], [2]]
        assert lanes.line.empty()

    asyncio.run(scenario())


def test_the_same_work_moves_to_the_quick_lane_when_one_of_it_is_seen_final() -> None:
    async def scenario() -> None:
        ended: set[int] = set()
        lanes = _lanes(ended=ended)
        for index, work in enumerate(["x", "y", "x", "x"]):
            lanes.submitted(index, work, final=False)
        ended.update({0, 3})  # 0 seen final; 3 ended another way meanwhile
        assert lanes.seen_final(0, "x") == 1
        assert await lanes.take(quick=True) == [2]
        assert lanes.seen_final(0, "x") == 0  # moved once only

    asyncio.run(scenario())


def test_take_gathers_up_to_poll_batch_and_drops_tasks_that_ended() -> None:
    async def scenario() -> None:
        ended: set[int] = set()
        lanes = _lanes(poll_batch=3, ended=ended)
        for index in range(5):
            lanes.submitted(index, str(index), final=False)
        ended.add(1)
        assert await lanes.take(quick=False) == [0, 2]  # 3 taken, the ended one dropped
        assert await lanes.take(quick=False) == [3, 4]

        ended.update({5, 6})
        lanes.submitted(5, "5", final=True)
        lanes.submitted(6, "6", final=True)
        lanes.submitted(7, "7", final=True)
        assert await lanes.take(quick=True) == [7]  # waits past lanes holding only ended tasks

    asyncio.run(scenario())


def test_retry_comes_back_after_its_delay() -> None:
    async def scenario() -> None:
        lanes = _lanes()
        lanes.retry(4, quick=True, delay=0.05)
        assert lanes.quick.empty()
        assert await asyncio.wait_for(lanes.take(quick=True), 2) == [4]

    asyncio.run(scenario())

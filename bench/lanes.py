"""The load generator's two lines of tasks waiting for their result (bench/driver.py fetches them).

The quick lane: tasks that are probably final already (final when submitted, like a cache hit, or
the same work as a task just seen final, like a coalesced duplicate), fetched with a plain GET by
fetchers of their own so that they never wait for a long-poll slot. The long-poll lane: every other
task, oldest first by its place in line; a task whose wait ran out gets a new place at the back,
one that was not final in the quick lane goes back to the place it had.

Tasks are known by their index in the run; `pending` tells whether one still waits for its result
(a task that ended meanwhile is dropped when taken)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable


class Lanes:
    def __init__(self, poll_batch: int, pending: Callable[[int], bool]) -> None:
        self.poll_batch = poll_batch
        self.pending = pending
        self.quick: asyncio.Queue[int] = asyncio.Queue()
        self.line: asyncio.PriorityQueue[tuple[int, int]] = asyncio.PriorityQueue()
        self.place: dict[int, int] = {}
        self.in_line: set[int] = set()
        self.places = itertools.count()
        self.same_work: dict[str, list[int]] = {}  # work key -> indexes of tasks not seen final yet

    def submitted(self, index: int, work: str, final: bool) -> None:
        """A task just accepted: to the quick lane if the reply says it is final already, else in
        line. `work` is its type and payload as a key (tasks of the same work end together)."""
        self.same_work.setdefault(work, []).append(index)
        if final:
            self.quick.put_nowait(index)
        else:
            self.to_line(index)

    def to_line(self, index: int, back: bool = False) -> None:
        """Into the long-poll lane: at its old place, or a new one at the back."""
        if index in self.in_line:
            return  # already waiting there (it was also put in the quick lane)
        if back or index not in self.place:
            self.place[index] = next(self.places)
        self.in_line.add(index)
        self.line.put_nowait((self.place[index], index))

    def retry(self, index: int, quick: bool, delay: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self.quick.put_nowait if quick else self.to_line, index)

    def seen_final(self, index: int, work: str) -> int:
        """Tasks of the same work (type and payload) as a task just seen final were probably
        coalesced with it or answered from its cached result: to the quick lane now rather than
        waiting in line. Returns how many were moved."""
        moved = 0
        for other in self.same_work.pop(work, []):
            if other != index and self.pending(other):
                moved += 1
                self.quick.put_nowait(other)
        return moved

    async def take(self, quick: bool) -> list[int]:
        """The next pending tasks of a lane, up to poll_batch: waits for the first, then takes what
        else is already there."""
        taken: list[int] = []
        while not taken:
            if quick:
                taken.append(await self.quick.get())
            else:
                taken.append((await self.line.get())[1])
            while len(taken) < self.poll_batch and not (self.quick if quick else self.line).empty():
                taken.append(self.quick.get_nowait() if quick else self.line.get_nowait()[1])
            if not quick:
                self.in_line.difference_update(taken)
            taken = [i for i in dict.fromkeys(taken) if self.pending(i)]
        return taken

"""A bounded queue between two tasks of one event loop that never makes the producer wait: when it is full, the oldest
item is dropped and counted; with a `max_age_s`, items that waited longer are dropped (and counted) when they come up.
Audio stays near real time and memory stays bounded whichever side falls behind."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class DroppingQueue(Generic[T]):
    """FIFO of at most `capacity` items for one producer and one consumer; `put` drops the oldest item when full
    (`dropped`), `get` skips the items that waited more than `max_age_s` seconds of `clock` (`expired`).
    `on_first_drop` is called when the first item is dropped or expired (to warn once).

    `close()` ends the stream: `get()` returns the items left, then None. `close(discard=True)` also drops them.
    """

    def __init__(self, capacity: int, max_age_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 on_first_drop: Callable[[], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be at least 1, got {capacity}")
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError(f"the longest wait in a queue must be positive, got {max_age_s} s")
        self._items: collections.deque[tuple[float, T]] = collections.deque(maxlen=capacity)
        self._changed = asyncio.Event()
        self._closed = False
        self.max_age_s, self.clock, self.on_first_drop = max_age_s, clock, on_first_drop
        self.dropped = 0
        self.expired = 0

    @property
    def capacity(self) -> int:
        return self._items.maxlen or 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Append `item`; returns False when the oldest item had to be dropped to make room (or the queue is closed)."""
        if self._closed:
            self._count_drop()
            return False
        full = len(self._items) == self.capacity
        if full:
            self._count_drop()
        self._items.append((self.clock(), item))
        self._changed.set()
        return not full

    async def get(self) -> T | None:
        """The oldest item that has not waited too long, waiting for one; None once the queue is closed and empty."""
        while True:
            while not self._items:
                if self._closed:
                    return None
                self._changed.clear()
                await self._changed.wait()
            queued_at, item = self._items.popleft()
            if self.max_age_s is None or self.clock() - queued_at <= self.max_age_s:
                return item
            self._count_drop(expired=True)

    def _count_drop(self, expired: bool = False) -> None:
        if self.on_first_drop is not None and not (self.dropped or self.expired):
            self.on_first_drop()
        if expired:
            self.expired += 1
        else:
            self.dropped += 1

    def close(self, discard: bool = False) -> None:
        if discard:
            self._items.clear()
        self._closed = True
        self._changed.set()

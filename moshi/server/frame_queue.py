"""A bounded queue between two tasks of one event loop that never makes the producer wait: when it is full, the oldest
item is dropped and counted. Audio stays near real time and memory stays bounded whichever side falls behind."""

from __future__ import annotations

import asyncio
import collections
from typing import Generic, TypeVar

T = TypeVar("T")


class DroppingQueue(Generic[T]):
    """FIFO of at most `capacity` items for one producer and one consumer; `put` drops the oldest item when full.

    `close()` ends the stream: `get()` returns the items left, then None. `close(discard=True)` also drops them.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be at least 1, got {capacity}")
        self._items: collections.deque[T] = collections.deque(maxlen=capacity)
        self._changed = asyncio.Event()
        self._closed = False
        self.dropped = 0

    @property
    def capacity(self) -> int:
        return self._items.maxlen or 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Append `item`; returns False when the oldest item had to be dropped to make room (or the queue is closed)."""
        if self._closed:
            self.dropped += 1
            return False
        full = len(self._items) == self.capacity
        if full:
            self.dropped += 1
        self._items.append(item)
        self._changed.set()
        return not full

    async def get(self) -> T | None:
        """The oldest item, waiting for one; None once the queue is closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        return self._items.popleft()

    def close(self, discard: bool = False) -> None:
        if discard:
            self._items.clear()
        self._closed = True
        self._changed.set()

"""`DroppingQueue`: first in, first out; never more than its capacity; the oldest item goes when full; close ends it."""

from __future__ import annotations

import asyncio

import pytest

from moshi.server.frame_queue import DroppingQueue


def drain(queue: DroppingQueue[int]) -> list[int]:
    async def take_all() -> list[int]:
        items = []
        while (item := await queue.get()) is not None:
            items.append(item)
        return items

    return asyncio.run(take_all())


def test_items_come_out_in_order_and_the_oldest_are_dropped_when_full() -> None:
    queue: DroppingQueue[int] = DroppingQueue(3)
    accepted = [queue.put(item) for item in range(7)]
    assert accepted == [True, True, True, False, False, False, False]
    assert len(queue) == 3 and queue.dropped == 4
    queue.close()
    assert drain(queue) == [4, 5, 6]


def test_close_discard_empties_and_later_puts_are_refused() -> None:
    queue: DroppingQueue[int] = DroppingQueue(4)
    queue.put(1)
    queue.put(2)
    queue.close(discard=True)
    assert not queue.put(3) and queue.dropped == 1
    assert drain(queue) == []


def test_get_waits_for_the_producer() -> None:
    async def scenario() -> list[int | None]:
        queue: DroppingQueue[int] = DroppingQueue(2)
        waiting = asyncio.create_task(queue.get())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        queue.put(5)
        first = await asyncio.wait_for(waiting, timeout=1)
        closing = asyncio.create_task(queue.get())
        await asyncio.sleep(0.01)
        queue.close()
        return [first, await asyncio.wait_for(closing, timeout=1)]

    assert asyncio.run(scenario()) == [5, None]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1, got 0"):
        DroppingQueue(0)


def test_items_that_waited_too_long_are_skipped_and_counted() -> None:
    now = [0.0]
    warnings: list[int] = []
    queue: DroppingQueue[int] = DroppingQueue(8, max_age_s=1.0, clock=lambda: now[0],
                                              on_first_drop=lambda: warnings.append(queue.expired))
    queue.put(1)
    now[0] = 0.5
    queue.put(2)
    queue.put(3)
    now[0] = 1.2  # item 1 waited 1.2 s, items 2 and 3 0.7 s
    first = asyncio.run(queue.get())
    now[0] = 1.6  # items 2 and 3 waited 1.1 s
    queue.put(4)
    queue.close()
    assert (first, drain(queue), queue.expired, queue.dropped) == (2, [4], 2, 0)
    assert warnings == [0]  # called once, before the first drop is counted


def test_the_first_drop_is_reported_once() -> None:
    warnings: list[int] = []
    queue: DroppingQueue[int] = DroppingQueue(2, on_first_drop=lambda: warnings.append(queue.dropped))
    for item in range(5):
        queue.put(item)
    assert warnings == [0] and queue.dropped == 3


def test_the_longest_wait_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive, got 0 s"):
        DroppingQueue(3, max_age_s=0)

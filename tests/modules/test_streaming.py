"""The streaming lifecycle: start/stop, detached children, per-item reset, exec masks, snapshots."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from moshi.modules.streaming import State, StreamingContainer, StreamingModule


@dataclasses.dataclass
class CounterState(State):
    count: torch.Tensor

    def reset(self, reset_mask: torch.Tensor) -> None:
        super().reset(reset_mask)
        self.count.masked_fill_(reset_mask, 0)


class Counter(StreamingModule[CounterState]):
    """Counts calls per batch item, respecting the exec mask."""

    def _init_streaming_state(self, batch_size: int) -> CounterState:
        return CounterState(batch_size, torch.device("cpu"), count=torch.zeros(batch_size, dtype=torch.long))

    def forward(self) -> torch.Tensor:
        state = self.streaming_state
        state.count.add_(state.exec_mask.long())
        return state.count.clone()


class Parent(StreamingContainer):
    def __init__(self) -> None:
        super().__init__()
        self.counter = Counter()
        self.detached = Counter()
        self.detached.set_streaming_detached(True)


def test_lifecycle_reaches_children_but_not_detached_ones():
    parent = Parent()
    with parent.streaming(2):
        assert parent.counter.is_streaming
        assert not parent.detached.is_streaming
    assert not parent.counter.is_streaming


def test_reset_only_masked_items_and_exec_mask_freezes():
    parent = Parent()
    with parent.streaming(3):
        for _ in range(4):
            parent.counter()
        parent.reset_streaming(torch.tensor([False, True, False]))
        assert parent.counter.streaming_state.count.tolist() == [4, 0, 4]
        parent.set_exec_mask(torch.tensor([True, True, False]))
        assert parent.counter().tolist() == [5, 1, 4]


def test_snapshot_restore_is_in_place():
    parent = Parent()
    with parent.streaming(2):
        parent.counter()
        live = parent.counter.streaming_state.count
        snapshot = parent.checkpoint_streaming()
        parent.counter()
        parent.rollback_streaming(snapshot)
        assert parent.counter.streaming_state.count is live
        assert live.tolist() == [1, 1]


def test_errors_are_clear():
    parent = Parent()
    with pytest.raises(RuntimeError, match="not streaming"):
        parent.counter()
    with parent.streaming(2):
        with pytest.raises(RuntimeError, match="already streaming"):
            parent.streaming(2)
        with pytest.raises(ValueError, match=r"shape \[2\]"):
            parent.reset_streaming(torch.tensor([True]))

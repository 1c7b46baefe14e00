"""Checks every streaming module must pass, shared by the module tests."""

from __future__ import annotations

import torch


def assert_rollback_replays(module: torch.nn.Module, x: torch.Tensor, split: int) -> None:
    """Stream `x` `[B, T, ...]` up to `split`, checkpoint, stream the rest, roll back and stream it again: the two runs
    of the rest are identical."""
    with torch.no_grad(), module.streaming(x.shape[0]):
        module(x[:, :split])
        checkpoint = module.checkpoint_streaming()
        first = module(x[:, split:])
        module.rollback_streaming(checkpoint)
        second = module(x[:, split:])
    assert torch.equal(first, second)

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


def assert_rollback_keeps_prefixes(module: torch.nn.Module, x: torch.Tensor, split: int, span: int,
                                   keep: list[int], chunk: int = 5) -> None:
    """Stream `x` `[B, T, ...]` up to `split`, checkpoint with `span`, stream `span` steps of which only the first
    `keep[b]` are item b's own (noise after), roll back keeping those, and stream each item on from its own position:
    every item's outputs equal the parallel forward's at the same positions."""
    B, T = x.shape[:2]
    rest = T - split - max(keep)
    with torch.no_grad():
        reference = module(x)
        with module.streaming(B):
            module(x[:, :split])
            checkpoint = module.checkpoint_streaming(span)
            guess = torch.randn_like(x[:, split: split + span])
            for b, kept in enumerate(keep):
                guess[b, :kept] = x[b, split: split + kept]
            module(guess)
            module.rollback_streaming(checkpoint, torch.tensor(keep))
            after = torch.stack([x[b, split + kept: split + kept + rest] for b, kept in enumerate(keep)])
            streamed = torch.cat([module(after[:, i: i + chunk]) for i in range(0, rest, chunk)], dim=1)
    expected = torch.stack([reference[b, split + kept: split + kept + rest] for b, kept in enumerate(keep)])
    torch.testing.assert_close(streamed, expected, atol=1e-4, rtol=0)

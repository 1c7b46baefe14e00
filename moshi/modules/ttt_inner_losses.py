"""The inner-loss diagnostic of TTT layers (the TTT paper's Figure 5), summed by position bin while a layer streams.

For the token at stream position t of a TTT layer, with the key `k_t` and target `v_t` the layer trains on, the inner
loss `l_t(W) = 1/2 ||LN(g(k_t; W)) - (v_t - k_t)||^2` (the very loss the layer descends), averaged over the heads, with

- `w0`: the learned initial fast weights (those a reset restores);
- `before`: the weights the token's mini-batch starts from, before its update (equal to `w0` in the first mini-batch);
- `after`: the weights the next mini-batch starts from, after the update that includes the token. Only mini-batches
  that complete are updated, so the last, partial mini-batch of a stream has no `after`.

A layer that learns in context shows `before` below `w0`, further below as the position grows, and `after` below
`before`. Everything is a sum on the layer's device (`InnerLossBins`, `[3, num_bins]`); no per-position tensor is
kept. The sums live in the layer's streaming state (`InnerLossTracker`), so `rollback_streaming` takes back what
rejected steps added with the rest of the state: only the steps a stream commits are counted. A rollback that keeps a
prefix of the steps adds back what that prefix recorded (`SegmentLosses`), as it re-absorbs the prefix's updates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

LOSS_KINDS = ("w0", "before", "after")
W0, BEFORE, AFTER = range(len(LOSS_KINDS))
NOT_LIMITED = torch.iinfo(torch.long).max


def sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for the sums, where the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


@dataclasses.dataclass
class InnerLossBins:
    """One layer's inner losses summed over batch items and the positions of each bin of `bin_size` positions.

    totals: `[3, num_bins]` the summed head-mean losses (`LOSS_KINDS` order); counts: `[3, num_bins]` how many (item,
    position) pairs each sum holds. Positions past `num_bins * bin_size` are not counted.
    """

    bin_size: int
    totals: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def zeros(cls, bin_size: int, num_positions: int, device: torch.device | str) -> InnerLossBins:
        if bin_size < 1 or num_positions < 1:
            raise ValueError(f"inner-loss bins need a positive bin size and length, got {bin_size}, {num_positions}")
        device = torch.device(device)
        shape = (len(LOSS_KINDS), -(-num_positions // bin_size))
        dtype = sum_dtype(device)
        return cls(bin_size, torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(shape, dtype=dtype, device=device))

    @property
    def num_bins(self) -> int:
        return int(self.totals.shape[1])

    def add(self, kind: int, positions: torch.Tensor, losses: torch.Tensor, counted: torch.Tensor) -> None:
        """Add `losses` `[B, n]` at `positions` `[B, n]` where `counted` `[B, n]` (tensor ops only: no host sync)."""
        counted = counted & (positions < self.num_bins * self.bin_size)
        bins = (positions // self.bin_size).clamp(0, self.num_bins - 1).flatten()
        weight = counted.to(self.totals.dtype).flatten()
        values = torch.where(counted, losses, torch.zeros_like(losses)).to(self.totals.dtype).flatten()
        self.totals[kind].index_add_(0, bins, values)
        self.counts[kind].index_add_(0, bins, weight)

    def summary(self) -> dict[str, list[Any]]:
        """`{"position": [first position of each bin], "w0": [...], "before": [...], "after": [...], "count": [...]}`:
        the mean losses of the bins holding any position (None for a kind without data in that bin), and how many
        (item, position) pairs each bin's `w0` and `before` average."""
        totals, counts = self.totals.double().cpu(), self.counts.double().cpu()
        used = ((counts[W0] > 0) | (counts[AFTER] > 0)).nonzero()[:, 0].tolist()
        summary: dict[str, list[Any]] = {"position": [b * self.bin_size for b in used]}
        for kind, name in enumerate(LOSS_KINDS):
            summary[name] = [float(totals[kind, b] / counts[kind, b]) if counts[kind, b] > 0 else None for b in used]
        summary["count"] = [int(counts[W0, b]) for b in used]
        return summary


@dataclasses.dataclass
class InnerLossTracker:
    """A streaming layer's inner-loss recording, part of its state: the `bins` it adds to, and per batch item the keys
    and values `[B, H, b, hd]` of its open mini-batch (for their `after` loss once the mini-batch closes) and `limit`
    `[B]`: positions from `limit` on are not counted (padding a scorer runs after a sequence's end)."""

    bins: InnerLossBins
    keys: torch.Tensor
    values: torch.Tensor
    limit: torch.Tensor

    @classmethod
    def start(cls, bins: InnerLossBins, batch_size: int, num_heads: int, mini_batch_size: int,
              head_dim: int) -> InnerLossTracker:
        device = bins.totals.device
        buffer = torch.zeros(batch_size, num_heads, mini_batch_size, head_dim, device=device)
        limit = torch.full((batch_size,), NOT_LIMITED, dtype=torch.long, device=device)
        return cls(bins, buffer, buffer.clone(), limit)

    def read(self, segment: SegmentLosses, kept: torch.Tensor | None = None) -> None:
        """Add a segment's `w0` and `before` losses and store its keys and values (only its `kept` `[B, n]` columns
        when given)."""
        stored = segment.stored if kept is None else segment.stored & kept
        counted = stored & (segment.positions < self.limit[:, None])
        self.bins.add(W0, segment.positions, segment.w0, counted)
        self.bins.add(BEFORE, segment.positions, segment.before, counted)
        slots = (segment.positions % self.keys.shape[2])[:, None, :, None].expand_as(segment.keys)
        chosen = stored[:, None, :, None]
        self.keys.scatter_(2, slots, torch.where(chosen, segment.keys, self.keys.gather(2, slots)))
        self.values.scatter_(2, slots, torch.where(chosen, segment.values, self.values.gather(2, slots)))

    def close(self, segment: SegmentLosses, whole: torch.Tensor | None = None) -> None:
        """Add the `after` losses of the mini-batches the segment closed (only for the `whole` `[B]` items when
        given: a segment kept in part closes nothing)."""
        if segment.after is None:
            return
        positions, losses, closed = segment.after
        closed = closed if whole is None else closed & whole
        self.bins.add(AFTER, positions, losses, closed[:, None].expand_as(positions))


@dataclasses.dataclass
class SegmentLosses:
    """What one streamed segment of `n` columns records: their `positions` `[B, n]`, which columns hold one of the
    item's steps (`stored` `[B, n]`: executing items, aligned columns left out), their `w0` and `before` losses
    `[B, n]`, keys and values `[B, H, n, hd]`, and, when it closed a mini-batch, `after`: the positions and losses
    `[B, b]` of that mini-batch and which items `[B]` closed one within their limit."""

    positions: torch.Tensor
    stored: torch.Tensor
    w0: torch.Tensor
    before: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    after: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

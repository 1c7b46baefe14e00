"""Training helpers with upstream's names: per-token cross-entropy over codebooks."""

from __future__ import annotations

import torch


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    logits_soft_clip: float | None = None,
) -> torch.Tensor:
    """Cross-entropy of every token, `[B, K, T]` in `dtype`, 0 where `mask` is False.

    `logits` `[B, K, T, card]` are aligned with `targets` `[B, K, T]` (as `LMModel.forward` returns them); masked
    positions may hold any value, NaN included, and any target. `logits_soft_clip` c squashes logits to
    `c * tanh(logits / c)` first.
    """
    if logits.shape[:-1] != targets.shape or mask.shape != targets.shape:
        raise ValueError(f"cross_entropy expects logits [B, K, T, card] with targets and mask [B, K, T]; got "
                         f"{list(logits.shape)}, {list(targets.shape)}, {list(mask.shape)}")
    scores = logits.to(dtype)
    if logits_soft_clip is not None:
        scores = logits_soft_clip * torch.tanh(scores / logits_soft_clip)
    safe_targets = torch.where(mask, targets, torch.zeros_like(targets))
    log_partition = torch.logsumexp(scores, dim=-1)
    target_scores = scores.gather(-1, safe_targets[..., None])[..., 0]
    return torch.where(mask, log_partition - target_scores, torch.zeros_like(log_partition))

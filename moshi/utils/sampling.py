"""Turning logits into tokens: greedy, temperature, top-k and top-p sampling."""

from __future__ import annotations

import torch


def _draw_from(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of `probs` `[..., card]` without a host sync: argmax of `probs / Exp(1)` noise."""
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return torch.argmax(probs / noise, dim=-1)


def _keep_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    values, indices = torch.topk(probs, k, dim=-1)
    return torch.zeros_like(probs).scatter_(-1, indices, values)


def _keep_top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before > p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def sample_token(
    logits: torch.Tensor,
    use_sampling: bool = False,
    temp: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Tokens `[...]` (long) from `logits` `[..., card]`.

    Greedy (argmax) when `use_sampling` is False or `temp` <= 0; otherwise sampled at temperature `temp`, restricted to
    the `top_p` probability mass when 0 < top_p < 1, else to the `top_k` most likely tokens when top_k > 0.
    """
    if not use_sampling or temp <= 0.0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float() / temp, dim=-1)
    if 0.0 < top_p < 1.0:
        probs = _keep_top_p(probs, top_p)
    elif top_k > 0:
        probs = _keep_top_k(probs, min(top_k, probs.shape[-1]))
    return _draw_from(probs, generator)

"""Turning logits into tokens: greedy, temperature, top-k and top-p sampling.

A draw is the argmax of the candidates' probabilities divided by Exp(1) noise: no host sync, and one exponential per
candidate. Top-k candidates come by decreasing probability, top-p candidates too (renormalised), so with the same seed
the random generator is consumed, and tokens drawn, exactly as upstream moshi 0.2.13 does.
"""

from __future__ import annotations

import torch


def _draw_from(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of `weights` `[..., n]` (non-negative, not necessarily normalised), drawn proportionally."""
    noise = torch.empty_like(weights).exponential_(1.0, generator=generator)
    return torch.argmax(weights / noise, dim=-1)


def _nucleus(probs: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens `[..., card]` by decreasing probability and their renormalised probabilities, zero past the first
    `p` of probability mass (the token that crosses `p` is kept)."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    kept = sorted_probs.masked_fill(mass_before > p, 0.0)
    return kept / kept.sum(dim=-1, keepdim=True), order


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
    the `top_p` probability mass when top_p > 0 (1 or more keeps every token), else to the `top_k` most likely tokens
    when top_k > 0, else from the whole vocabulary.
    """
    if not use_sampling or temp <= 0.0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float() / temp, dim=-1)
    if top_p > 0.0:
        candidates, tokens = _nucleus(probs, top_p)
    elif top_k > 0:
        candidates, tokens = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1)
    else:
        return _draw_from(probs, generator)
    return tokens.gather(-1, _draw_from(candidates, generator).unsqueeze(-1)).squeeze(-1)

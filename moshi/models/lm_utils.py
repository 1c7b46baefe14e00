"""Building blocks of the LM: token embeddings with a "no input" id, the acoustic delay layout (for a parallel
forward, and for teacher-forced streaming steps), and the error that explains the removed `teacher_forcing_tokens`
keyword of research versions of `step_with_logits`."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from ..modules.norms import make_norm

if TYPE_CHECKING:
    from .lm import LMModel


class ScaledEmbedding(nn.Embedding):
    """Token embedding where the id `zero_idx` (-1) means "no input" and embeds to exact zeros.

    Optional extras of released configs: a LayerNorm after the lookup (`norm`) and a low-rank table followed by a
    linear map to `embedding_dim` (`low_rank`).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        norm: bool = False,
        zero_idx: int = -1,
        low_rank: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_embeddings, low_rank or embedding_dim, device=device, dtype=dtype)
        if zero_idx >= 0:
            raise ValueError(f"zero_idx must be negative, got {zero_idx}")
        self.zero_idx = zero_idx
        self.norm = make_norm("layer_norm", self.embedding_dim, device=device, dtype=dtype) if norm else None
        self.low_rank = (
            nn.Linear(low_rank, embedding_dim, bias=False, device=device, dtype=dtype) if low_rank else None
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` `[...]` -> embeddings `[..., dim]`, zero where `tokens == zero_idx`."""
        is_zero = (tokens == self.zero_idx)[..., None]
        y = super().forward(tokens.clamp(min=0))
        if self.norm is not None:
            y = self.norm(y)
        y = y.masked_fill(is_zero, 0.0)
        if self.low_rank is not None:
            y = self.low_rank(y)
        return y


def delay_streams(codes: torch.Tensor, delays: Sequence[int], fill: torch.Tensor) -> torch.Tensor:
    """Shift stream k of `codes` `[B, K, T]` right by `delays[k]`, filling the gap with `fill[:, k]` (`[B, K, 1]`)."""
    shifted = []
    for k, delay in enumerate(delays):
        stream = codes[:, k]
        if delay:
            stream = torch.cat([fill[:, k].expand(-1, delay), stream[:, :-delay]], dim=1)
        shifted.append(stream)
    return torch.stack(shifted, dim=1)


def undelay_streams(
    values: torch.Tensor, delays: Sequence[int], fill_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift stream k of `values` `[B, K, T, ...]` left by `delays[k]`, so step t refers to frame t again.

    Returns the shifted values (tail filled with `fill_value`) and the validity mask `[B, K, T]`.
    """
    B, K, T = values.shape[:3]
    mask = torch.ones(B, K, T, dtype=torch.bool, device=values.device)
    shifted = []
    for k, delay in enumerate(delays):
        stream = values[:, k]
        if delay:
            tail = torch.full_like(stream[:, :delay], fill_value)
            stream = torch.cat([stream[:, delay:], tail], dim=1)
            mask[:, k, T - delay:] = False
        shifted.append(stream)
    return torch.stack(shifted, dim=1), mask


def teacher_forced_step_inputs(
    lm: LMModel, own: torch.Tensor, user: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Streaming inputs that teacher-force the own audio `own` `[B, dep_q, T]` (and the user audio `[B, n_q - dep_q, T]`
    when given; the zero token "no input" otherwise).

    Returns user tokens `[B, n_q - dep_q, S]` and own tokens `[B, dep_q, S]` for the S = T + max_delay steps of the
    pass, for `LMGen.step_with_logits(user[..., s:s+1], own[..., s:s+1])` (or `step_chunk_with_logits` on slices):
    step s gets codebook k of frame `s - delays[1 + k]` (0 outside the sequence) and user frame `s - 1`. The step
    outputs then hold frames 0..T-1 in order, and `cross_entropy(out.audio_logits, out.tokens[:, 1:])` is the loss of
    the model on `own`. This is the alignment of upstream's `LMModel.forward`.
    """
    B, K, T = own.shape
    steps = T + max(lm.delays)
    owns = own.new_zeros(B, K, steps)
    for k, delay in enumerate(lm.delays[1: 1 + K]):
        owns[:, k, delay: delay + T] = own[:, k]
    users = own.new_full((B, lm.n_q - lm.dep_q, steps), lm.zero_token_id)
    if user is not None:
        users[:, :, 1: T + 1] = user
    return users, owns


STEP_WITH_LOGITS_MIGRATION = "docs/step_with_logits.md, section \"Migrating from teacher_forcing_tokens\""

Method = TypeVar("Method", bound=Callable[..., Any])


def explains_teacher_forcing_tokens(method: Method) -> Method:
    """`method` refusing the keyword `teacher_forcing_tokens` with a TypeError that says what replaces it (other
    unknown keywords fail as Python makes them fail)."""

    @functools.wraps(method)
    def refusing(*args: Any, **kwargs: Any) -> Any:
        if "teacher_forcing_tokens" in kwargs:
            raise TypeError(
                f"{method.__name__}() no longer takes teacher_forcing_tokens: give the audio to score as "
                "depformer_replace_tokens in the delayed layout (moshi.models.lm_utils.teacher_forced_step_inputs "
                "builds it from [B, dep_q, T] codes) and take the targets from out.tokens (out.tokens[:, 1:] is the "
                "frame out.audio_logits predicts), or score whole sequences with moshi_eval.librilight; see "
                f"{STEP_WITH_LOGITS_MIGRATION}")
        return method(*args, **kwargs)

    return refusing  # type: ignore[return-value]


def init_scaled_normal_(module: nn.Module) -> None:
    """Truncated normal init with std 1/sqrt(fan_in) for linears and 1/sqrt(dim) for embeddings; zero biases."""
    if isinstance(module, nn.Linear):
        fan_in, weight = module.in_features, module.weight
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        fan_in, weight = module.embedding_dim, module.weight
    else:
        return
    if weight.is_meta:
        return
    std = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        values = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
        nn.init.trunc_normal_(values, std=std, a=-3 * std, b=3 * std)
        weight.copy_(values)

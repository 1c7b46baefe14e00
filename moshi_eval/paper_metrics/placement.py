"""Where an utterance's codes go in the model's streams, and what it is scored against.

- `stream="own"`: the codes are the model's own stream, teacher-forced, and scored against the model's predictions of
  that stream (a likelihood of the utterance as something the model says). The user stream holds `other`.
- `stream="user"`: the codes are the user stream; the own stream holds `other` and the model's predictions of its own
  stream are scored against the utterance's codes (the moshi-finetune TTT fork's cross-stream score: how likely the
  model is to say the same thing at the same time; Moshi does not predict the user stream).

`other` is the zero token ("no input") or Mimi codes of digital silence.
"""

from __future__ import annotations

import torch

from ..scoring.scorer import ModelShape, ScoringItem


def place_utterance(utterance_id: str, codes: torch.Tensor, shape: ModelShape, stream: str,
                    silence: torch.Tensor | None) -> ScoringItem:
    """The scoring item of an utterance's codes `[K, T]` (K >= the codebooks the placement needs); `silence`
    `[K, >= T]` codes fill the other stream, the zero token when None."""
    frames = codes.shape[-1]
    if stream == "own":
        return ScoringItem(utterance_id, codes[: shape.dep_q], other_stream(shape.num_user, frames, shape, silence))
    if shape.num_user == 0:
        raise ValueError("stream 'user' needs a model with a user stream; this one has only its own (n_q == dep_q)")
    own = other_stream(shape.dep_q, frames, shape, silence)
    return ScoringItem(utterance_id, own, codes[: shape.num_user], targets=codes[: shape.dep_q])


def other_stream(codebooks: int, frames: int, shape: ModelShape, silence: torch.Tensor | None) -> torch.Tensor:
    if silence is None:
        return torch.full((codebooks, frames), shape.zero_token_id, dtype=torch.long)
    return silence[:codebooks, :frames].clone()

"""From an utterance's per-token losses to its scores, and from two scores to a pair's outcome.

An utterance of T frames has `[T, dep_q]` cross-entropies (natural log), NaN where a codebook's frame has no defined
prediction (its last `delay` frames, as `LMModel.forward` masks them). With codebook weights w (all 1 by default):

- `tokens`: the number of defined tokens;
- `sum_logprob` = -sum over defined tokens of w[k] * loss: the (weighted) log-probability of the utterance;
- `mean_logprob` = sum_logprob / (sum over defined tokens of w[k]): per token, equal to sum_logprob / tokens when the
  weights are all 1, and the weighted mean of the moshi-finetune TTT fork's scripts with `100,1,...,1`.

A pair is won (1) when its good utterance scores higher under the chosen normalisation, tied (1/2) when both score the
same, lost (0) otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..scoring.run import defined_codebook_losses

NORMALIZATIONS = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class UtteranceScore:
    frames: int
    tokens: int
    sum_logprob: float
    mean_logprob: float

    def value(self, normalization: str) -> float:
        return self.mean_logprob if normalization == "mean" else self.sum_logprob


def utterance_score(codebook_losses: np.ndarray, weights: Sequence[float] | None = None) -> UtteranceScore:
    """Scores of one utterance from its losses `[T, dep_q]` (float64 sums)."""
    losses, defined, w = defined_codebook_losses(codebook_losses, weights)
    weight_total = float((defined * w).sum())
    total = -float((losses * w).sum())
    mean = total / weight_total if weight_total > 0 else float("nan")
    return UtteranceScore(int(losses.shape[0]), int(defined.sum()), total, mean)


def pair_outcome(good: float, bad: float) -> float:
    """1 when the good utterance scores higher, 1/2 on a tie, 0 otherwise (a NaN score loses)."""
    if good > bad:
        return 1.0
    if good == bad:
        return 0.5
    return 0.0

"""Checks on loss values: non-finite losses stop the run; losses worse than uniform guessing are flagged."""

from __future__ import annotations

import math


class NonFiniteLossError(RuntimeError):
    """A NaN or infinite loss, with the sequence and the first frame (and codebook) where it appeared."""

    def __init__(self, sequence_id: str, frame: int, codebook: int) -> None:
        self.sequence_id = sequence_id
        self.frame = frame
        self.codebook = codebook
        where = f"frame {frame}, codebook {codebook}" if frame >= 0 else "an unknown frame"
        super().__init__(f"non-finite loss (NaN or inf) in sequence {sequence_id!r} at {where}: the model produced "
                         "invalid logits there; stopping instead of averaging it away")


class WorseThanUniformWarning(UserWarning):
    """A window loss above ln(card): the model does worse than guessing uniformly there."""


def uniform_loss(card: int) -> float:
    """Cross-entropy of a uniform guess over `card` tokens: ln(card) nats."""
    return math.log(card)


def above_uniform_flags(window_losses: dict[str, float | None], card: int) -> list[str]:
    """Messages for every window loss above ln(card), i.e. worse than guessing uniformly."""
    limit = uniform_loss(card)
    return [f"{name} = {loss:.4f} is above ln(card) = {limit:.4f}: worse than uniform guessing over {card} tokens"
            for name, loss in window_losses.items() if loss is not None and loss > limit]

"""The scores of one sequence: per-frame, per-codebook cross-entropy, and its per-frame mean over codebooks."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def frame_losses(codebook_losses: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Per-frame loss `[T]`: weighted mean over the defined codebooks of `[T, K]` (NaN when none is defined)."""
    losses = np.asarray(codebook_losses, dtype=np.float64)
    w = np.ones(losses.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (losses.shape[1],):
        raise ValueError(f"codebook_weights has {w.shape[0]} values but the losses have {losses.shape[1]} codebooks")
    defined = np.isfinite(losses)
    total_weight = (defined * w).sum(axis=1)
    weighted = np.where(defined, losses, 0.0) @ w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total_weight > 0, weighted / np.where(total_weight > 0, total_weight, 1.0), np.nan)


@dataclasses.dataclass
class SequenceLosses:
    """One scored sequence: per-frame, per-codebook cross-entropy `[T, dep_q]` (NaN where undefined)."""

    sequence_id: str
    codebook_losses: np.ndarray
    files: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.codebook_losses.shape[0])

    def frame_losses(self, weights: list[float] | None = None) -> np.ndarray:
        return frame_losses(self.codebook_losses, weights)

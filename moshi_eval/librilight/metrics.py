"""Aggregating per-frame, per-codebook losses: window losses at positions, the mean curve, its slope, binned curves.

Inputs are arrays `[T_i, K]` (float, NaN where a codebook of a frame has no defined prediction). The per-frame loss is
the (weighted) mean over the frame's defined codebooks. The window loss at position P is, for each sequence of at least
P frames, the mean per-frame loss over frames [P - W, P), averaged over those sequences (None when no sequence reaches
P). The mean curve is, at each frame index, the mean per-frame loss over the sequences long enough to have that frame;
the slope is the least-squares slope of that curve against the frame index. The progression is the window loss at every
multiple of a step (1000 frames) that some sequence reaches.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np


def nanmean_or_none(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def window_loss(per_frame: Sequence[np.ndarray], position: int, window: int) -> tuple[float | None, int]:
    """Mean over the sequences reaching `position` of their mean loss on frames [position - window, position)."""
    means = [nanmean_or_none(losses[position - window: position]) for losses in per_frame if len(losses) >= position]
    means = [m for m in means if m is not None]
    return (float(np.mean(means)) if means else None), len(means)


def progression(per_frame: Sequence[np.ndarray], step: int, window: int) -> list[tuple[int, float]]:
    """`(position, window loss)` at every multiple of `step` (from `window` on) up to the longest sequence."""
    longest = max((len(losses) for losses in per_frame), default=0)
    points = []
    for position in range(step, longest + 1, step):
        if position >= window:
            loss, _ = window_loss(per_frame, position, window)
            if loss is not None:
                points.append((position, loss))
    return points


def perplexity(loss: float | None) -> float | None:
    """exp(loss): the perplexity of a mean cross-entropy in nats (inf past float range; None for None)."""
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def codebook_window_losses(codebook_losses: Sequence[np.ndarray], position: int, window: int) -> list[float | None]:
    """Per codebook, the window loss at `position` (same averaging as `window_loss`)."""
    reaching = [losses[position - window: position] for losses in codebook_losses if len(losses) >= position]
    if not reaching:
        return []
    result = []
    for codebook in range(reaching[0].shape[1]):
        means = [nanmean_or_none(losses[:, codebook]) for losses in reaching]
        means = [m for m in means if m is not None]
        result.append(float(np.mean(means)) if means else None)
    return result


def mean_curve(series: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over sequences at each frame index (NaN where none is defined) and the number of sequences used."""
    length = max((len(s) for s in series), default=0)
    total = np.zeros(length)
    count = np.zeros(length, dtype=np.int64)
    for values in series:
        values = np.asarray(values, dtype=np.float64)
        defined = np.isfinite(values)
        total[: len(values)] += np.where(defined, values, 0.0)
        count[: len(values)] += defined
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


def least_squares_slope(values: np.ndarray) -> float | None:
    """Slope of the least-squares line through (index, value) over the finite values; None with fewer than two."""
    values = np.asarray(values, dtype=np.float64)
    x = np.flatnonzero(np.isfinite(values)).astype(np.float64)
    if x.size < 2:
        return None
    y = values[x.astype(np.int64)]
    x_centered = x - x.mean()
    return float((x_centered * (y - y.mean())).sum() / (x_centered**2).sum())


def binned(values: np.ndarray, bin_size: int) -> np.ndarray:
    """Mean of the finite values in consecutive bins of `bin_size` frames (NaN for a bin without any)."""
    values = np.asarray(values, dtype=np.float64)
    num_bins = -(-len(values) // bin_size)
    padded = np.full(num_bins * bin_size, np.nan)
    padded[: len(values)] = values
    blocks = padded.reshape(num_bins, bin_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(blocks, axis=1) if num_bins else np.zeros(0)

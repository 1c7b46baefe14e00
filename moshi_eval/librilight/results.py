"""`LibriLightResult`: the per-sequence losses of a run and everything reported from them, as a JSON-ready dict."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from moshi.utils.files import write_json_atomic

from ..scoring.files import is_finite_number, json_safe
from ..scoring.run import SequenceLosses, above_uniform_flags, uniform_loss
from . import metrics
from .config import position_key

FORMAT_VERSION = 1
PROGRESSION_STEP = 1000


@dataclasses.dataclass
class LibriLightResult:
    """Results of a LibriLight evaluation; `to_dict()` gives the reported metrics (see docs/librilight.md)."""

    sequences: list[SequenceLosses]
    card: int
    frame_rate: float
    positions: list[int] = dataclasses.field(default_factory=lambda: [8000, 16000, 24000])
    window: int = 1000
    bin_size: int = 100
    codebook_weights: list[float] | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    timing: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    complete: bool = True
    legacy_keys: bool = False
    model_flags: list[str] = dataclasses.field(default_factory=list)
    ttt_inner_losses: dict[str, dict[str, list[Any]]] | None = None

    def per_frame(self) -> list[np.ndarray]:
        return [sequence.frame_losses(self.codebook_weights) for sequence in self.sequences]

    def loss_at(self, position: int) -> float | None:
        """Mean per-frame loss over the window ending at `position`, averaged over the sequences reaching it."""
        return metrics.window_loss(self.per_frame(), position, self.window)[0]

    @property
    def slope(self) -> float | None:
        return metrics.least_squares_slope(metrics.mean_curve(self.per_frame())[0])

    def to_dict(self) -> dict[str, Any]:
        per_frame = self.per_frame()
        curve, counts = metrics.mean_curve(per_frame)
        headline: dict[str, Any] = {}
        perplexities: dict[str, Any] = {}
        windows: dict[str, Any] = {}
        for position in self.positions:
            key = position_key(position)
            loss, reaching = metrics.window_loss(per_frame, position, self.window)
            headline[f"librilight_loss_{key}"] = loss
            perplexities[f"librilight_perplexity_{key}"] = metrics.perplexity(loss)
            windows[key] = {
                "position": position,
                "start": position - self.window,
                "num_sequences": reaching,
                "loss": loss,
                "codebooks": metrics.codebook_window_losses(
                    [s.codebook_losses for s in self.sequences], position, self.window),
                "minutes": position / self.frame_rate / 60.0,
            }
        progression = metrics.progression(per_frame, PROGRESSION_STEP, self.window)
        if self.legacy_keys:
            headline |= self.integer_keyed_losses(headline, progression)
        headline |= perplexities
        headline["librilight_slope"] = metrics.least_squares_slope(curve)
        headline["librilight_samples"] = int(sum(np.isfinite(losses).sum() for losses in per_frame))
        return json_safe({
            **headline,
            "librilight_mean_loss": metrics.nanmean_or_none(np.concatenate(per_frame)) if per_frame else None,
            "codebook_mean_losses": self.codebook_means(),
            "librilight_progression": [{"position": position, "loss": loss, "perplexity": metrics.perplexity(loss)}
                                       for position, loss in progression],
            "num_sequences": len(self.sequences),
            "complete": self.complete,
            "windows": windows,
            "curve": self.curve_dict(curve, counts),
            **({"ttt_inner_losses": self.ttt_inner_losses} if self.ttt_inner_losses is not None else {}),
            "flags": self.model_flags + self.uniform_flags(headline),
            "uniform_loss": uniform_loss(self.card),
            "card": self.card,
            "frame_rate": self.frame_rate,
            "window": self.window,
            "positions": list(self.positions),
            "codebook_weights": self.codebook_weights,
            "sequences": [self.sequence_summary(s, f) for s, f in zip(self.sequences, per_frame)],
            "skipped": self.skipped,
            "config": self.config,
            "model": self.model,
            "timing": self.timing,
            "format_version": FORMAT_VERSION,
        })

    def uniform_flags(self, headline: dict[str, Any]) -> list[str]:
        """The window losses worse than uniform guessing, as flags."""
        return above_uniform_flags(
            {f"librilight_loss_{position_key(p)}": headline[f"librilight_loss_{position_key(p)}"]
             for p in self.positions}, self.card)

    def integer_keyed_losses(self, headline: dict[str, Any], progression: list[tuple[int, float]]
                             ) -> dict[str, float | None]:
        """`librilight_loss_<frames>` for the positions that are multiples of 1000 and every progression point, as
        older analysis scripts parse them (`librilight_loss_8000` next to `librilight_loss_8k`)."""
        keyed = {f"librilight_loss_{p}": headline[f"librilight_loss_{position_key(p)}"]
                 for p in self.positions if p % 1000 == 0}
        keyed |= {f"librilight_loss_{position}": loss for position, loss in progression}
        return dict(sorted(keyed.items(), key=lambda item: int(item[0].rsplit("_", 1)[1])))

    def flat_metrics(self) -> dict[str, int | float]:
        """The `librilight_*` numbers of `to_dict()` that are finite ints or floats, for loggers (wandb, a training
        logger) that take nothing else: no lists, dicts, None or NaN."""
        return {key: value for key, value in self.to_dict().items()
                if key.startswith("librilight_") and is_finite_number(value)}

    def curve_dict(self, curve: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
        codebook_curves = []
        if self.sequences:
            for codebook in range(self.sequences[0].codebook_losses.shape[1]):
                mean, _ = metrics.mean_curve([s.codebook_losses[:, codebook] for s in self.sequences])
                codebook_curves.append(metrics.binned(mean, self.bin_size).tolist())
        starts = list(range(0, len(curve), self.bin_size))
        return {
            "bin_size": self.bin_size,
            "start": starts,
            "loss": metrics.binned(curve, self.bin_size).tolist(),
            "num_sequences": [int(counts[start]) for start in starts],
            "codebooks": codebook_curves,
        }

    def codebook_means(self) -> list[float | None]:
        """Per codebook, the mean loss over every frame where it is defined, in every sequence."""
        if not self.sequences:
            return []
        stacked = np.concatenate([s.codebook_losses for s in self.sequences]).astype(np.float64)
        return [metrics.nanmean_or_none(stacked[:, codebook]) for codebook in range(stacked.shape[1])]

    def sequence_summary(self, sequence: SequenceLosses, per_frame: np.ndarray) -> dict[str, Any]:
        """One sequence's numbers, with what a comparison of runs resamples (`moshi_eval.compare`): its defined frames
        (`samples`), per-codebook means and defined frames, and its per-frame loss in the curve's bins."""
        reached = {position_key(p): metrics.nanmean_or_none(per_frame[p - self.window: p])
                   for p in self.positions if len(per_frame) >= p}
        codebooks = sequence.codebook_losses.astype(np.float64)
        return {
            "id": sequence.sequence_id,
            "files": sequence.files,
            "num_frames": sequence.num_frames,
            "minutes": sequence.num_frames / self.frame_rate / 60.0,
            "mean_loss": metrics.nanmean_or_none(per_frame),
            "samples": int(np.isfinite(per_frame).sum()),
            "slope": metrics.least_squares_slope(per_frame),
            "window_losses": reached,
            "codebook_mean_losses": [metrics.nanmean_or_none(codebooks[:, k]) for k in range(codebooks.shape[1])],
            "codebook_samples": np.isfinite(codebooks).sum(axis=0).tolist(),
            "curve": metrics.binned(per_frame, self.bin_size).tolist(),
        }

    @functools.cached_property
    def data(self) -> dict[str, Any]:
        """`to_dict()`, computed once (a finished result does not change)."""
        return self.to_dict()

    def write_json(self, path: str | Path) -> dict[str, Any]:
        write_json_atomic(path, self.data)
        return self.data

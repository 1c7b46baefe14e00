"""Does the model keep talking? Per batch item and time bin of a generated reply: text tokens per minute, the PAD
fraction of the text stream, the silence fraction of the audio and the share of repeated text n-grams.

`TalkMeter` is fed one step at a time, as the reply is generated: the step's text tokens `[B]` and its decoded audio
frame `[B, C, frame_size]` (one Mimi frame, 80 ms at 12.5 Hz). It keeps counters per bin, never the audio or the text,
and `figures()` turns them into one `TalkFigures` per item. `moshi.run_inference --report` writes them as JSON
(`write_report`), the server logs them at the end of each conversation (`summary_line`, `bins_line`).

Definitions (bins are whole frames: `bin_seconds` is rounded to a multiple of the frame duration, at least one):
- a text token is PAD when it is the text padding id or the end-of-padding id; `text_tokens_per_minute` counts the
  others over the bin's duration, `pad_fraction` is PAD tokens / steps (one text token per step);
- a frame is silent when its RMS over all its samples is below `silence_dbfs` dBFS, with dBFS = 20 log10(RMS) and full
  scale 1.0 (a full-scale sine is -3 dBFS); `silence_fraction` is silent frames / frames;
- `repeated_ngram_fraction` is 1 - unique / total over the n-grams (of `ngram` consecutive non-PAD tokens, PAD skipped)
  that end in the bin, an n-gram counted once per occurrence (its context carries over from earlier bins); None when
  no n-gram ends in the bin. 0 for text that never repeats itself within a bin, near 1 for a loop.
- `seconds` is the start of each bin, from the first reply frame; the last bin may be shorter than the others: its
  figures are over its own duration (`duration_seconds`), so a rate stays a rate.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import write_json_atomic

DEFAULT_BIN_SECONDS = 10.0
DEFAULT_SILENCE_DBFS = -40.0
"""An RMS of 0.01. Speech recorded at an ordinary level has 80 ms frames of roughly -35 to -15 dBFS; pauses, low hiss
and digital silence lie below. A model whose quiet output is louder needs a higher threshold (listen, then set it)."""
DEFAULT_NGRAM = 4


@dataclasses.dataclass(frozen=True)
class TalkSettings:
    """How the reply is binned and judged (see the module's docstring)."""

    bin_seconds: float = DEFAULT_BIN_SECONDS
    silence_dbfs: float = DEFAULT_SILENCE_DBFS
    ngram: int = DEFAULT_NGRAM

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bin_seconds) and self.bin_seconds > 0):
            raise ValueError(f"the report's bins must last more than 0 seconds, got {self.bin_seconds}")
        if not (math.isfinite(self.silence_dbfs) and self.silence_dbfs <= 0):
            raise ValueError(f"the silence threshold must be a level of at most 0 dBFS, got {self.silence_dbfs}")
        if self.ngram < 1:
            raise ValueError(f"the repeated n-grams need n >= 1, got {self.ngram}")


@dataclasses.dataclass
class TalkFigures:
    """One batch item's figures, one entry per bin, and `overall` the same figures over the whole reply (from the
    summed counts: the bins weighted by their durations, steps or n-grams)."""

    seconds: list[float]
    duration_seconds: list[float]
    text_tokens_per_minute: list[float]
    pad_fraction: list[float]
    silence_fraction: list[float]
    repeated_ngram_fraction: list[float | None]
    overall: dict[str, float | None]


# ---------------------------------------------------------------------------------------------------------------------
# The math, on arrays


def frames_per_bin(bin_seconds: float, frame_seconds: float) -> int:
    """Whole frames in a bin of `bin_seconds` (rounded; at least one)."""
    return max(1, round(bin_seconds / frame_seconds))


def silent_frames(pcm: np.ndarray, silence_dbfs: float) -> np.ndarray:
    """Whether each item's frame `pcm` `[B, C, N]` has an RMS below `silence_dbfs` dBFS: bool `[B]`."""
    mean_square = np.mean(np.square(pcm, dtype=np.float64), axis=(1, 2))
    return mean_square < 10.0 ** (silence_dbfs / 10.0)


def per_minute(counts: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """`counts` over `seconds` (broadcast), per minute."""
    return counts * 60.0 / seconds


def repeated_fraction(ngrams: np.ndarray, unique: np.ndarray) -> np.ndarray:
    """1 - `unique` / `ngrams`, NaN where there is no n-gram."""
    return np.where(ngrams > 0, 1.0 - unique / np.maximum(ngrams, 1), np.nan)


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(value) else float(value) for value in values]


# ---------------------------------------------------------------------------------------------------------------------
# The accumulator


@dataclasses.dataclass
class _BinCounts:
    """One bin's counters: `frames` steps, and per item `[B]`: non-PAD tokens, PAD tokens, silent frames, n-grams
    ending in the bin and the distinct ones among them."""

    frames: int
    text: np.ndarray
    pad: np.ndarray
    silent: np.ndarray
    ngrams: np.ndarray
    unique: np.ndarray

    @classmethod
    def empty(cls, batch_size: int) -> _BinCounts:
        return cls(0, *(np.zeros(batch_size, dtype=np.int64) for _ in range(5)))


class TalkMeter:
    """Counts, step by step, what `batch_size` replies say (see the module's docstring for the definitions).

    `frame_seconds`: the duration of one step's frame (Mimi: 1920 / 24000 = 0.08 s); `pad_ids`: the text tokens that
    are padding (`LMModel.text_padding_token_id`, `LMModel.end_of_text_padding_id`). Memory: a few integers per item
    and bin, and the n-grams of the bin in progress.
    """

    def __init__(self, batch_size: int, frame_seconds: float, pad_ids: Sequence[int],
                 settings: TalkSettings | None = None) -> None:
        self.batch_size, self.frame_seconds = batch_size, frame_seconds
        self.pad_ids = tuple(int(token) for token in pad_ids)
        self.settings = settings or TalkSettings()
        self.bin_frames = frames_per_bin(self.settings.bin_seconds, frame_seconds)
        self._finished: list[_BinCounts] = []
        self._current = _BinCounts.empty(batch_size)
        self._context = [collections.deque(maxlen=self.settings.ngram) for _ in range(batch_size)]
        self._seen: list[set[tuple[int, ...]]] = [set() for _ in range(batch_size)]

    @property
    def bin_seconds(self) -> float:
        """The bins' duration: `settings.bin_seconds` rounded to whole frames."""
        return self.bin_frames * self.frame_seconds

    @property
    def frames(self) -> int:
        """Steps counted so far."""
        return len(self._finished) * self.bin_frames + self._current.frames

    def update(self, text_tokens: torch.Tensor | np.ndarray, pcm: torch.Tensor | np.ndarray) -> None:
        """Count one step: its text tokens `[B]` and its audio frame `[B, C, frame_size]`."""
        tokens, audio = _as_numpy(text_tokens), _as_numpy(pcm)
        if tokens.shape != (self.batch_size,) or audio.ndim != 3 or audio.shape[0] != self.batch_size:
            raise ValueError(f"a step of the talk report takes text tokens [{self.batch_size}] and audio "
                             f"[{self.batch_size}, C, frame_size], got {list(tokens.shape)} and {list(audio.shape)}")
        current = self._current
        is_pad = np.isin(tokens, self.pad_ids)
        current.frames += 1
        current.pad += is_pad
        current.text += ~is_pad
        current.silent += silent_frames(audio, self.settings.silence_dbfs)
        for item in np.flatnonzero(~is_pad):
            self._count_ngram(int(item), int(tokens[item]))
        if current.frames == self.bin_frames:
            self._close_bin()

    def _count_ngram(self, item: int, token: int) -> None:
        context = self._context[item]
        context.append(token)
        if len(context) == context.maxlen:
            ngram = tuple(context)
            self._current.ngrams[item] += 1
            if ngram not in self._seen[item]:
                self._seen[item].add(ngram)
                self._current.unique[item] += 1

    def _close_bin(self) -> None:
        self._finished.append(self._current)
        self._current = _BinCounts.empty(self.batch_size)
        for seen in self._seen:
            seen.clear()

    def _bins(self) -> list[_BinCounts]:
        return self._finished + ([self._current] if self._current.frames else [])

    def figures(self) -> list[TalkFigures]:
        """Each item's figures so far (the bin in progress is the last, shorter bin)."""
        bins = self._bins()
        frames = np.array([counts.frames for counts in bins], dtype=np.int64)
        duration = frames * self.frame_seconds
        start = np.arange(len(bins)) * self.bin_seconds
        stacked = {name: np.stack([getattr(counts, name) for counts in bins], axis=1) if bins
                   else np.zeros((self.batch_size, 0), dtype=np.int64)
                   for name in ("text", "pad", "silent", "ngrams", "unique")}
        total_seconds = float(duration.sum())
        total_frames = int(frames.sum())
        items = []
        for item in range(self.batch_size):
            counts = {name: values[item] for name, values in stacked.items()}
            total = {name: int(values.sum()) for name, values in counts.items()}
            overall = {
                "seconds": total_seconds,
                "text_tokens_per_minute": _ratio(total["text"] * 60.0, total_seconds),
                "pad_fraction": _ratio(total["pad"], total_frames),
                "silence_fraction": _ratio(total["silent"], total_frames),
                "repeated_ngram_fraction": _ratio(total["ngrams"] - total["unique"], total["ngrams"]),
            }
            items.append(TalkFigures(
                seconds=start.tolist(), duration_seconds=duration.tolist(),
                text_tokens_per_minute=per_minute(counts["text"], duration).tolist(),
                pad_fraction=(counts["pad"] / frames).tolist(),
                silence_fraction=(counts["silent"] / frames).tolist(),
                repeated_ngram_fraction=_nan_to_none(repeated_fraction(counts["ngrams"], counts["unique"])),
                overall=overall))
        return items

    def describe(self) -> dict[str, Any]:
        """The settings a report states, with what its fields mean."""
        return {
            "bin_seconds": self.bin_seconds,
            "bin_frames": self.bin_frames,
            "frame_seconds": self.frame_seconds,
            "silence_threshold_dbfs": self.settings.silence_dbfs,
            "pad_token_ids": list(self.pad_ids),
            "repetition_ngram": self.settings.ngram,
            "seconds": "start of each bin, in seconds of the reply from its first frame; the last bin may be shorter "
                       "(duration_seconds) and its figures are over its own duration",
            "silence": "a frame is silent when its RMS is below silence_threshold_dbfs (20 log10 RMS, full scale 1.0)",
            "text_tokens_per_minute": "text tokens that are not PAD (pad_token_ids) per minute of the bin",
            "repeated_ngram_fraction": "1 - distinct / all n-grams of consecutive non-PAD tokens ending in the bin "
                                       "(null: none ends there)",
        }


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _as_numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy() if values.is_floating_point() else values.detach().cpu().numpy()
    return np.asarray(values)


# ---------------------------------------------------------------------------------------------------------------------
# Lines for a log and the JSON file


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def summary_line(figures: TalkFigures, ngram: int, bin_seconds: float) -> str:
    """One line: the overall figures, then the first and the last bin's (where the talk dies, it shows there)."""
    overall = figures.overall
    if not figures.seconds:
        return "no reply frames"
    line = (f"{overall['seconds']:.1f} s: {_rate(overall['text_tokens_per_minute'])} text tokens/min, PAD "
            f"{_percent(overall['pad_fraction'])}, silence {_percent(overall['silence_fraction'])}, repeated "
            f"{ngram}-grams {_percent(overall['repeated_ngram_fraction'])}")
    if len(figures.seconds) > 1:
        line += (f"; first -> last {bin_seconds:g} s bin: {_rate(figures.text_tokens_per_minute[0])} -> "
                 f"{_rate(figures.text_tokens_per_minute[-1])} text tokens/min, silence "
                 f"{_percent(figures.silence_fraction[0])} -> {_percent(figures.silence_fraction[-1])}, repeated "
                 f"{_percent(figures.repeated_ngram_fraction[0])} -> {_percent(figures.repeated_ngram_fraction[-1])}")
    return line


def bins_line(figures: TalkFigures, bin_seconds: float) -> str:
    """Every bin's figures on one line: tokens per minute, then PAD, silence and repeated n-grams in percent."""
    def row(values: Sequence[float | None], scale: float) -> str:
        return " ".join("-" if value is None else f"{scale * value:.0f}" for value in values)

    return (f"per {bin_seconds:g} s bin: text tokens/min {row(figures.text_tokens_per_minute, 1)}; PAD % "
            f"{row(figures.pad_fraction, 100)}; silence % {row(figures.silence_fraction, 100)}; repeated % "
            f"{row(figures.repeated_ngram_fraction, 100)}")


def write_report(path: str | Path, figures: Sequence[TalkFigures], settings: dict[str, Any]) -> None:
    """`{"items": [figures as dicts], "settings": settings}` as indented JSON, atomically (a reader never sees half a
    report)."""
    write_json_atomic(path, {"items": [dataclasses.asdict(item) for item in figures], "settings": settings})

"""Evaluation settings: one dataclass with its checks, and the parsers of the command line's list values.

Settings files and the keys of researchers' own files (`librilight_*`, a training YAML's `paper_metrics:` section) are
mapped onto these fields in `config_keys.py`.
"""

from __future__ import annotations

import dataclasses

from ..scoring.checked_settings import CheckedSettings
from ..scoring.codebook_weights import parse_float_list, weights_for_codebooks
from ..scoring.settings_file import ConfigError
from ..scoring.text_policy import CHUNKED_TEXT_POLICIES, TEXT_POLICIES

USER_STREAMS = ("silence", "zero")
SCORING_MODES = ("step", "chunked")
DEFAULT_POSITIONS = (8000, 16000, 24000)

__all__ = ["ConfigError", "LibriLightConfig", "config_field_names", "parse_float_list", "parse_positions",
           "position_key"]


@dataclasses.dataclass
class LibriLightConfig(CheckedSettings):
    """What to evaluate and how; every field has a CLI flag of the same name (`--max-chapters` for `max_chapters`).

    `context` and `rope_max_period` record the attention context and RoPE period the LM was built with when they
    change its function (None: the checkpoint's); the model must have been built with them."""

    audio_dir: str | None = None
    audio_files: list[str] | None = None
    codes: list[str] | None = None
    layout: str = "auto"
    max_chapters: int = 3
    books: list[str] | None = None
    max_files: int | None = None
    num_sequences: int | None = None
    min_snr: float | None = None
    min_duration: float | None = None
    exclude_genres: list[str] = dataclasses.field(default_factory=list)
    seed: int = 0
    strict: bool = False
    batch_size: int = 1
    max_sequence_length: int = 50000
    text_policy: str = "greedy"
    mode: str = "step"
    chunk_size: int = 1024
    user_stream: str | None = None
    temp_text: float = 0.7
    top_k_text: int = 25
    codebook_weights: list[float] | None = None
    first_codebook_weight: float | None = None
    positions: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_POSITIONS))
    window: int = 1000
    bin_size: int = 100
    cache_dir: str | None = None
    use_cache: bool = True
    encode_chunk_frames: int = 25
    output: str | None = None
    plot: str | None = None
    resume: bool = True
    legacy_keys: bool = False
    check_every: int = 250
    context: int | None = None
    rope_max_period: float | None = None
    ttt_inner_losses: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if self.layout not in ("auto", "librilight", "files"):
            raise ValueError(f"layout must be 'auto', 'librilight' or 'files', got {self.layout!r}")
        if self.text_policy not in TEXT_POLICIES:
            raise ValueError(f"text_policy must be one of {TEXT_POLICIES}, got {self.text_policy!r}")
        if self.mode not in SCORING_MODES:
            raise ValueError(f"mode must be one of {SCORING_MODES}, got {self.mode!r}")
        if self.mode == "chunked" and self.text_policy not in CHUNKED_TEXT_POLICIES:
            raise ValueError(f"mode 'chunked' supports the text policies {', '.join(CHUNKED_TEXT_POLICIES)}; use mode "
                             "'step' to sample")
        if self.user_stream is not None and self.user_stream not in USER_STREAMS:
            raise ValueError(f"user_stream must be one of {USER_STREAMS}, got {self.user_stream!r}")
        for name in ("max_chapters", "batch_size", "max_sequence_length", "window", "bin_size", "encode_chunk_frames",
                     "chunk_size", "check_every", "num_sequences", "max_files"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        for book in self.books or ():
            parts = str(book).split("/")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"books are named SPEAKER/BOOK (e.g. 100/emerald_city_librivox), got {book!r}")
        if not self.positions:
            raise ValueError("positions must list at least one frame position")
        for position in self.positions:
            if int(position) < self.window:
                raise ValueError(f"position {position} is smaller than the window ({self.window} frames)")
        if self.codebook_weights is not None and any(w < 0 for w in self.codebook_weights):
            raise ValueError(f"codebook_weights must be non-negative, got {self.codebook_weights}")
        if self.codebook_weights is not None and sum(self.codebook_weights) <= 0:
            raise ValueError("codebook_weights must have a positive sum")
        if self.first_codebook_weight is not None:
            if self.codebook_weights is not None:
                raise ValueError("give codebook_weights or first_codebook_weight, not both")
            if self.first_codebook_weight <= 0:
                raise ValueError(f"first_codebook_weight must be positive, got {self.first_codebook_weight}")

    def resolved_codebook_weights(self, num_codebooks: int) -> list[float] | None:
        """Per-codebook weights for `num_codebooks` codebooks (None: plain mean); ValueError on a count mismatch."""
        if self.first_codebook_weight is not None:
            return [float(self.first_codebook_weight)] + [1.0] * (num_codebooks - 1)
        return weights_for_codebooks(self.codebook_weights, num_codebooks)


def config_field_names() -> list[str]:
    return [field.name for field in dataclasses.fields(LibriLightConfig)]


def parse_positions(text: str) -> list[int]:
    """'8k,16k,24000' -> [8000, 16000, 24000]."""
    positions = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        scale = 1000 if part.lower().endswith("k") else 1
        number = part[:-1] if scale == 1000 else part
        try:
            positions.append(int(float(number) * scale))
        except ValueError as error:
            raise ValueError(f"cannot read position {part!r} (use frames, e.g. 8000 or 8k)") from error
    return positions


def position_key(position: int) -> str:
    """8000 -> '8k', 1500 -> '1500': the suffix of `librilight_loss_<key>`."""
    return f"{position // 1000}k" if position % 1000 == 0 else str(position)

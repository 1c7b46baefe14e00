"""Evaluation settings: one dataclass with its checks, and how positions are read and named (`8k` for 8000 frames).

Settings files, and the keys of the moshi-finetune TTT fork's training files (`librilight_*` in a `paper_metrics:`
section), are mapped onto these fields in `config_keys.py`.
"""

from __future__ import annotations

import dataclasses

from ..scoring.settings import EvaluationSettings, check_at_least_one, check_choice

USER_STREAMS = ("silence", "zero")
LAYOUTS = ("auto", "librilight", "files")
DEFAULT_POSITIONS = (8000, 16000, 24000)

__all__ = ["LibriLightConfig", "parse_positions", "position_key"]


@dataclasses.dataclass
class LibriLightConfig(EvaluationSettings):
    """What to evaluate and how; every field has a CLI flag of the same name (`--max-chapters` for `max_chapters`).
    The fields every evaluation has (scoring mode, text policy, batch size, codebook weights, codes cache, output,
    resuming, the model's context) are `EvaluationSettings`'."""

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
    max_sequence_length: int = 50000
    user_stream: str | None = None
    temp_text: float = 0.7
    top_k_text: int = 25
    first_codebook_weight: float | None = None
    positions: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_POSITIONS))
    window: int = 1000
    bin_size: int = 100
    plot: str | None = None
    legacy_keys: bool = False
    check_every: int = 250
    ttt_inner_losses: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        super().validate()
        check_choice("layout", self.layout, LAYOUTS)
        if self.user_stream is not None:
            check_choice("user_stream", self.user_stream, USER_STREAMS)
        check_at_least_one(self, "max_chapters", "max_sequence_length", "window", "bin_size", "check_every",
                           "num_sequences", "max_files")
        for book in self.books or ():
            parts = str(book).split("/")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"books are named SPEAKER/BOOK (e.g. 100/emerald_city_librivox), got {book!r}")
        if not self.positions:
            raise ValueError("positions must list at least one frame position")
        for position in self.positions:
            if int(position) < self.window:
                raise ValueError(f"position {position} is smaller than the window ({self.window} frames)")
        if self.first_codebook_weight is not None:
            if self.codebook_weights is not None:
                raise ValueError("give codebook_weights or first_codebook_weight, not both")
            if self.first_codebook_weight <= 0:
                raise ValueError(f"first_codebook_weight must be positive, got {self.first_codebook_weight}")

    def resolved_codebook_weights(self, num_codebooks: int) -> list[float] | None:
        """Per-codebook weights for `num_codebooks` codebooks (None: plain mean); ValueError on a count mismatch."""
        if self.first_codebook_weight is not None:
            return [float(self.first_codebook_weight)] + [1.0] * (num_codebooks - 1)
        return super().resolved_codebook_weights(num_codebooks)


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

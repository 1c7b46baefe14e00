"""What an evaluation reads: sequences made of audio files (or one pre-encoded codes file), and what it leaves out.

`SequenceSource` is one scored sequence; `Skip` records an input left out and why; `SkipCollector` gathers them (or, in
strict mode, raises on the first); `DataError` is input data that cannot be used, with the file named.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Input data that cannot be used; the message names the file or directory."""


@dataclasses.dataclass(frozen=True)
class Chapter:
    """One audio file of a sequence, with its duration read from the header and its LibriLight metadata (if any)."""

    path: Path
    num_samples: int
    sample_rate: int
    metadata: dict[str, Any] | None = None

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


@dataclasses.dataclass(frozen=True)
class SequenceSource:
    """One evaluated sequence: either audio chapters joined in order or one pre-encoded codes file."""

    sequence_id: str
    chapters: tuple[Chapter, ...] = ()
    codes_path: Path | None = None

    @property
    def duration(self) -> float:
        return sum(chapter.duration for chapter in self.chapters)

    @property
    def files(self) -> list[str]:
        if self.codes_path is not None:
            return [str(self.codes_path)]
        return [str(chapter.path) for chapter in self.chapters]


@dataclasses.dataclass(frozen=True)
class Skip:
    """Something left out of the evaluation, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class SkipCollector:
    """Collects skips; in strict mode the first skip raises DataError instead."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.skipped: list[Skip] = []

    def skip(self, path: Path | str, reason: str) -> None:
        if self.strict:
            raise DataError(f"{path}: {reason} (strict mode turns skipped inputs into errors)")
        self.skipped.append(Skip(str(path), reason))

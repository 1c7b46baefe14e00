"""What a benchmark is made of: utterances (audio files) and the pairs of them it compares.

A pair holds a `good` utterance (a real word, a grammatical sentence, a story's real ending) and a `bad` one; the model
wins the pair when it gives the good one the higher score. `group` says what the pair belongs to (its gold-file keys,
or the story's uuid), and sBLIMP pairs carry their `type` and `subtype` there.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

BENCHMARKS = ("swuggy", "sblimp", "sstory", "tstory")
SPLITS = ("dev", "test")


@dataclasses.dataclass(frozen=True, order=True)
class Utterance:
    """One audio file of a benchmark; `file` is its path relative to the benchmark folder (as results name it)."""

    benchmark: str
    file: str
    path: Path = dataclasses.field(compare=False)

    @property
    def utterance_id(self) -> str:
        return f"{self.benchmark}/{self.file}"


@dataclasses.dataclass(frozen=True)
class Pair:
    good: Utterance
    bad: Utterance
    group: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)

    @property
    def key(self) -> tuple[str, str]:
        return self.good.file, self.bad.file


@dataclasses.dataclass
class BenchmarkSet:
    """A benchmark's pairs: every pair its data defines (`total_pairs`) and the ones selected to be scored."""

    name: str
    directory: Path
    gold: Path | None
    pairs: list[Pair]
    total_pairs: int
    max_pairs: int | None = None
    ignored_files: list[str] = dataclasses.field(default_factory=list)

    @property
    def utterances(self) -> list[Utterance]:
        """The distinct utterances of the selected pairs, sorted by file."""
        return sorted({utterance for pair in self.pairs for utterance in (pair.good, pair.bad)})

    @property
    def split(self) -> str | None:
        """`dev` or `test` when the folder is a ZeroSpeech split folder (`.../lexical/dev`), else None."""
        return self.directory.name if self.directory.name in SPLITS else None


def select_pairs(pairs: list[Pair], max_pairs: int | None, seed: int) -> list[Pair]:
    """All pairs sorted by their files, or a seeded random subset of `max_pairs` of them (kept in that order)."""
    ordered = sorted(pairs, key=lambda pair: pair.key)
    if max_pairs is None or max_pairs >= len(ordered):
        return ordered
    chosen = random.Random(seed).sample(range(len(ordered)), max_pairs)
    return [ordered[index] for index in sorted(chosen)]

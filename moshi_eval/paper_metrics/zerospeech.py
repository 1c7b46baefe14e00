"""sWUGGY and sBLIMP in the ZeroSpeech 2021 sLM21 layout: `<split>/*.wav` next to (or apart from) a `gold.csv`.

- sWUGGY (`lexical/{dev,test}`, gold columns `id, filename, voice, frequency, word, correct`): the word (`correct` 1)
  is paired with every non-word (`correct` 0) of the same `id` and `voice`.
- sBLIMP (`syntactic/{dev,test}`, gold columns `id, filename, type, subtype, correct, voice, transcription`): the
  grammatical row is paired with the ungrammatical rows of the same `id, voice, type, subtype`.

A gold row's `filename` names `<folder>/<filename>` (`.wav` added when it has no extension). A file the gold file names
but the folder lacks, a group without both sides, or a group with two words (two grammatical rows: pairs of different
files sharing an id) is a `DataError` naming the gold file and its line(s).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

from ..scoring.errors import DataError
from .gold import GoldRow, read_gold
from .pairs import Pair, Utterance


@dataclasses.dataclass(frozen=True)
class GoldLayout:
    """The gold columns a benchmark's file must have, and those that make a pair's group; the group's columns,
    `filename` and `correct` must be filled in on every row."""

    benchmark: str
    columns: tuple[str, ...]
    group_by: tuple[str, ...]
    good: str
    bad: str

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.group_by, "filename", "correct")


SWUGGY = GoldLayout("swuggy", ("id", "filename", "voice", "frequency", "word", "correct"), ("id", "voice"),
                    "word", "non-word")
SBLIMP = GoldLayout("sblimp", ("id", "filename", "type", "subtype", "correct", "voice", "transcription"),
                    ("id", "voice", "type", "subtype"), "grammatical", "ungrammatical")


def gold_pairs(layout: GoldLayout, directory: Path, gold: Path) -> list[Pair]:
    """Every pair the gold file defines over the audio in `directory`."""
    if not directory.is_dir():
        raise DataError(f"{directory}: {layout.benchmark} audio folder not found")
    rows = read_gold(gold, layout.columns, layout.keys)
    groups: dict[tuple[str, ...], list[GoldRow]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.values[column] for column in layout.group_by)].append(row)
    pairs = []
    for key, members in sorted(groups.items()):
        where = ", ".join(f"{column}={value!r}" for column, value in zip(layout.group_by, key))
        good = [utterance_of(layout, directory, gold, row) for row in members if row.correct]
        bad = [utterance_of(layout, directory, gold, row) for row in members if not row.correct]
        if not good or not bad:
            lacking = layout.good if not good else layout.bad
            lines = ", ".join(str(row.line) for row in members)
            raise DataError(f"{gold}: the group {where} (line(s) {lines}) has no {lacking} to pair with")
        if len(good) > 1:
            first, second = [row.line for row in members if row.correct][:2]
            raise DataError(f"{gold}, line {second}: a second {layout.good} in the group {where} (the first is on line "
                            f"{first}); a group holds one {layout.good} and its {layout.bad}s, so pairs of other files "
                            "cannot share its keys")
        group = dict(zip(layout.group_by, key))
        pairs.extend(Pair(good[0], b, group) for b in bad)
    return pairs


def utterance_of(layout: GoldLayout, directory: Path, gold: Path, row: GoldRow) -> Utterance:
    path = directory / row.audio_name
    if not path.is_file():
        raise DataError(f"{gold}, line {row.line}: names {row.audio_name!r}, but {path} does not exist")
    return Utterance(layout.benchmark, row.audio_name, path)

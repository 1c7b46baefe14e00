"""Spoken and topic StoryCloze folders: `<n>_<uuid>_correct.wav` and `<n>_<uuid>_incorrect.wav`, paired by uuid.

Files are found in the folder and its subfolders. Audio files whose names do not follow the pattern are left out and
listed; a uuid with only one side, or with one side twice, is a `DataError` naming the files.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from ..scoring.errors import DataError
from .pairs import Pair, Utterance

STORY_FILE = re.compile(r"^(?P<number>\d+)_(?P<uuid>[0-9A-Za-z-]+)_(?P<ending>correct|incorrect)\.wav$")


def story_pairs(benchmark: str, directory: Path) -> tuple[list[Pair], list[str]]:
    """The pairs of the folder, and the audio files left out because their names do not follow the pattern."""
    if not directory.is_dir():
        raise DataError(f"{directory}: {benchmark} audio folder not found")
    endings: dict[str, dict[str, list[Utterance]]] = defaultdict(lambda: defaultdict(list))
    ignored = []
    for path in sorted(directory.rglob("*.wav")):
        name = path.relative_to(directory).as_posix()
        match = STORY_FILE.match(path.name)
        if match is None:
            ignored.append(name)
            continue
        endings[match["uuid"]][match["ending"]].append(Utterance(benchmark, name, path))
    pairs = []
    for uuid, sides in sorted(endings.items()):
        for ending in ("correct", "incorrect"):
            found = sides.get(ending, [])
            if len(found) != 1:
                others = [u.file for side in sides.values() for u in side]
                count = "no" if not found else f"{len(found)}"
                raise DataError(f"{directory}: story {uuid} has {count} '{ending}' ending file(s) "
                                f"(found {', '.join(others)}); each story needs exactly one of each")
        pairs.append(Pair(sides["correct"][0], sides["incorrect"][0], {"uuid": uuid}))
    if not pairs:
        raise DataError(f"{directory}: no <n>_<uuid>_correct.wav / <n>_<uuid>_incorrect.wav files found")
    return pairs, ignored

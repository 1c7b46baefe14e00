"""Reading a ZeroSpeech 2021 `gold.csv`: columns found by name (in any order), every row checked.

A malformed file (not UTF-8 text, no header, a required column missing, a row of the wrong width, an empty cell in a
column the pairing reads, a `correct` value other than 0/1/true/false, a row repeated, a file named by two rows) is a
`DataError` naming the file, the line and the value.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from ..scoring.errors import DataError

TRUE_VALUES = frozenset({"1", "true"})
FALSE_VALUES = frozenset({"0", "false"})


@dataclasses.dataclass(frozen=True)
class GoldRow:
    """One row: its line number in the file, the required columns' values, whether it is the `correct` item, and all
    its cells."""

    line: int
    values: dict[str, str]
    correct: bool
    cells: tuple[str, ...]

    @property
    def audio_name(self) -> str:
        """The audio file the row names, relative to the benchmark folder (`.wav` added when it has no extension)."""
        name = self.values["filename"]
        return name if Path(name).suffix else f"{name}.wav"


def read_gold(path: Path, columns: Sequence[str], keys: Sequence[str]) -> list[GoldRow]:
    """The rows of `path`, reading `columns` by name; the `keys` columns (among them `correct` and `filename`) must be
    filled in on every row."""
    if not path.is_file():
        raise DataError(f"{path}: gold file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the gold file as UTF-8 text ({error})") from error
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: empty gold file, expected a header with {', '.join(columns)}")
    names = [name.strip() for name in header]
    missing = [column for column in columns if column not in names]
    if missing:
        raise DataError(f"{path}: gold file lacks the column(s) {', '.join(missing)} (found {', '.join(names)})")
    position = {column: names.index(column) for column in columns}
    rows = [parse_row(path, line, cells, names, position, keys) for line, cells in enumerate(reader, start=2) if cells]
    if not rows:
        raise DataError(f"{path}: the gold file has a header but no rows")
    check_each_file_once(path, rows)
    return rows


def check_each_file_once(path: Path, rows: list[GoldRow]) -> None:
    """DataError at the first row that repeats an earlier one, or names an audio file an earlier row names: scored
    twice, it would count its pairs twice."""
    first_of_cells: dict[tuple[str, ...], int] = {}
    first_of_file: dict[str, int] = {}
    for row in rows:
        if row.cells in first_of_cells:
            raise DataError(f"{path}, line {row.line}: repeats line {first_of_cells[row.cells]}; each row must name "
                            "another audio file")
        if row.audio_name in first_of_file:
            raise DataError(f"{path}, line {row.line}: names {row.audio_name!r}, as line "
                            f"{first_of_file[row.audio_name]} does; each audio file must have one row")
        first_of_cells[row.cells] = first_of_file[row.audio_name] = row.line


def parse_row(path: Path, line: int, cells: list[str], names: list[str], position: dict[str, int],
              keys: Sequence[str]) -> GoldRow:
    if len(cells) != len(names):
        raise DataError(f"{path}, line {line}: {len(cells)} values for {len(names)} columns")
    values = {column: cells[index].strip() for column, index in position.items()}
    for column in keys:
        if not values[column]:
            raise DataError(f"{path}, line {line}: empty {column!r}")
    correct = values["correct"].lower()
    if correct not in TRUE_VALUES | FALSE_VALUES:
        raise DataError(f"{path}, line {line}: 'correct' must be 0 or 1, got {values['correct']!r}")
    return GoldRow(line, values, correct in TRUE_VALUES, tuple(cell.strip() for cell in cells))

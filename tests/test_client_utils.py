"""`moshi.client_utils` prints what upstream 0.2.13's prints (transcript recorded from upstream by
`tests/fixtures/upstream_client_utils/generate.py`), and keeps every piece of a word that moves to the next row."""

from __future__ import annotations

import importlib.util
import io
import json
import re
from pathlib import Path

import pytest

from moshi import client_utils
from moshi.client_utils import AnyPrinter, Printer, RawPrinter, log

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "upstream_client_utils"
TRANSCRIPT = json.loads((FIXTURE / "transcript.json").read_text())


def _generator():
    """The fixture's generator module, whose `replay` recorded upstream and replays here."""
    spec = importlib.util.spec_from_file_location("upstream_client_utils_generator", FIXTURE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scenario", TRANSCRIPT["scenarios"], ids=lambda scenario: scenario["name"])
def test_prints_what_upstream_prints(scenario):
    for call, expected, got in zip(scenario["calls"], scenario["records"], _generator().replay(client_utils, scenario)):
        assert got == expected, f"{scenario['name']}: {call}"


def _screen(text: str) -> list[str]:
    """The rows a terminal shows after `text`: colours dropped, a carriage return overwrites its row from the start."""
    rows: list[list[str]] = [[]]
    column = 0
    for char in re.sub(r"\033\[[0-9;]*m", "", text):
        if char == "\n":
            rows.append([])
            column = 0
        elif char == "\r":
            column = 0
        else:
            row = rows[-1]
            row[column: column + 1] = [char]
            column += 1
    return ["".join(row) for row in rows]


def test_a_word_of_several_pieces_moves_whole_and_every_row_fits_the_box():
    tokens = [" Streaming", " text", " wo", "r", "ld", "wide", " and", " a", " pie", "ce", "wise", " end", "ing"]
    stream = io.StringIO()
    printer = Printer(max_cols=16, stream=stream)
    printer.print_header()
    for token in tokens:
        printer.print_token(token)
        printer.print_pending()
    printer.log("info", "done")
    header, *full_rows, last_row, after_log = _screen(stream.getvalue())
    assert header == " " + "-" * 16 + " "
    assert all(len(row) == len(header) and row.startswith("| ") and row.endswith(" |") for row in full_rows), full_rows
    assert last_row.startswith("| ") and after_log == ""
    shown = " ".join(row[2:-2] for row in full_rows) + " " + last_row[2:]
    assert shown.split() == "".join(tokens).split()


def test_public_names_work_as_upstream_scripts_use_them(capsys):
    log("warning", "careful")
    assert capsys.readouterr().out == client_utils.make_log("warning", "careful") + "\n"
    assert isinstance(Printer(), AnyPrinter) and isinstance(RawPrinter(), AnyPrinter)
    with pytest.raises(ValueError, match="'debug'"):
        client_utils.make_log("debug", "x")

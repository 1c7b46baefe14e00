"""Gold files and audio are strict: a repeated row, a file named twice, pairs of different files sharing an id, and a
WAV file cut short are one `error:` line naming the file (and the gold line), exit code 2, instead of numbers computed
from the wrong pairs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from evaluation_helpers import error_lines, save_small_checkpoint
from paper_metrics_helpers import copy_sets

from moshi_eval.paper_metrics.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_small_checkpoint(tmp_path_factory.mktemp("checkpoint"))


def edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def replaced_cells(line: str, **cells: str) -> str:
    """A lexical gold line (`word,correct,voice,filename,id,frequency`) with some cells replaced."""
    columns = ["word", "correct", "voice", "filename", "id", "frequency"]
    values = dict(zip(columns, line.split(",")))
    return ",".join((values | cells)[column] for column in columns)


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


LEXICAL = "lexical/dev/gold.csv"
DEFECTS = {
    "repeated row": ("swuggy", lambda root: edit_lines(root / LEXICAL, lambda lines: [*lines, lines[1]]),
                     re.escape(f"{LEXICAL}, line 16: repeats line 2; each row must name another audio file")),
    "file named twice": ("swuggy", lambda root: edit_lines(
        root / LEXICAL, lambda lines: [*lines[:4], replaced_cells(lines[4], filename="w1_alex_0"), *lines[5:]]),
        re.escape(f"{LEXICAL}, line 5: names 'w1_alex_0.wav', as line 2 does; each audio file must have one row")),
    "id shared by pairs of other files": ("swuggy", lambda root: edit_lines(
        root / LEXICAL, lambda lines: [*lines[:4], *(replaced_cells(line, id="1") for line in lines[4:6]), *lines[6:]]),
        re.escape(f"{LEXICAL}, line 5: a second word in the group id='1', voice='Alex' (the first is on line 2); a "
                  "group holds one word and its non-words, so pairs of other files cannot share its keys")),
    "sBLIMP keys shared by two pairs": ("sblimp", lambda root: edit_lines(
        root / "syntactic/dev/gold.csv",
        lambda lines: [*lines[:3], *(line.replace("determiner_noun_agreement_1", "anaphor_gender_agreement")
                                     .replace("determiner_noun_agreement,2", "anaphor_agreement,1")
                                     for line in lines[3:5]), *lines[5:]]),
        re.escape("syntactic/dev/gold.csv, line 4: a second grammatical in the group id='1', voice='Alex', "
                  "type='anaphor_agreement', subtype='anaphor_gender_agreement' (the first is on line 2)")),
    "truncated wav (sWUGGY)": ("swuggy", lambda root: cut_in_half(root / "lexical/dev/w2_bea_1.wav"),
                               (r"lexical/dev/w2_bea_1.wav: truncated audio, the header announces \d+ samples but the "
                               r"file holds \d+")),
    "truncated wav (sStoryCloze)": ("sstory", lambda root: cut_in_half(root / "sstory/2_0a1b2c3d-0002_correct.wav"),
                                    r"sstory/2_0a1b2c3d-0002_correct.wav: truncated audio, the header announces"),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_gold_and_audio_defects_are_one_error_line(checkpoint, tmp_path, capsys, defect):
    root = copy_sets(tmp_path / "sets")
    bench, damage, message = DEFECTS[defect]
    folders = {"swuggy": "lexical/dev", "sblimp": "syntactic/dev", "sstory": "sstory"}
    damage(root)
    status = main([f"--{bench}-dir", str(root / folders[bench]), *checkpoint, "--quiet", "--no-cache",
                   "--output", str(tmp_path / "out.json")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert error_lines(err) == err.strip().splitlines() and len(error_lines(err)) == 1, err
    line = error_lines(err)[0]
    assert line.startswith(f"error: {root}/"), line
    assert re.search(message, line), line
    assert not (tmp_path / "out.json").exists()

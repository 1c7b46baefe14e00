"""Acceptance 1 and 5: training YAML files with our users' structure and keys run through
`python -m moshi_eval.librilight --config FILE --audio-dir TREE` with only model flags added, and score exactly the book
they name; the notes (deprecated keys included) are printed one line each, also in a plain subprocess run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from librilight_helpers import (
    chapter_metadata,
    random_codes,
    save_demo_checkpoint,
    subprocess_env,
    tone,
    write_chapter,
    write_codes,
)
from training_yamls import BOOK_OF, OLD_DEFAULT_BOOK, SECTIONS, training_yaml

from moshi_eval.librilight.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")

BOOKS = {OLD_DEFAULT_BOOK: 4, "200/second_book_64kb_mp3": 4, "100/zz_other_book": 2}
CHAPTER_SECONDS = 0.3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint, and a tree holding their single book (one chapter without its .json) among others."""
    root = tmp_path_factory.mktemp("training_yamls")
    _, _, model_flags = save_demo_checkpoint(root / "checkpoint")
    for book, chapters in BOOKS.items():
        for chapter in range(chapters):
            metadata = None if chapter == 1 else chapter_metadata()
            write_chapter(root / "tree" / book, f"{chapter:02d}", tone(CHAPTER_SECONDS, 16000, 140 + 30 * chapter,
                                                                       chapter), 16000, metadata)
    return root, model_flags


def run(setup, tmp_path, capsys, kind, *extra):
    root, model_flags = setup
    config = tmp_path / f"{kind}.yaml"
    config.write_text(training_yaml(kind, tmp_path / "their_cluster"))
    output = tmp_path / "results.json"
    status = main(["--config", str(config), *extra, *model_flags, "--output", str(output),
                   "--cache-dir", str(root / "cache"), "--quiet"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(output.read_text()), captured


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_their_kind_of_file_scores_the_book_it_names(setup, tmp_path, capsys, kind):
    root, _ = setup
    data, captured = run(setup, tmp_path, capsys, kind, "--audio-dir", str(root / "tree"))
    book = BOOK_OF[kind] or OLD_DEFAULT_BOOK  # pre_concatenated names no book: the first one in name order
    assert [sequence["id"] for sequence in data["sequences"]] == [book]
    chapters = min(BOOKS[book], data["config"]["max_chapters"])
    assert data["sequences"][0]["files"] == [str(root / "tree" / book / f"{c:02d}.flac") for c in range(chapters)]
    assert data["skipped"] == [] and "sequences: 1 scored, 0 skipped" in captured.out
    notes = [line for line in captured.err.splitlines() if line.startswith("note: ")]
    assert any("ignoring the 21 training key(s)" in note for note in notes)
    assert any("'ttt' section is not applied" in note for note in notes)
    assert data["model"]["ttt_layers"] == 2  # the checkpoint's own TTT layers, not the file's `ttt:` section


def test_their_files_keep_their_lengths_and_file_layout(setup, tmp_path, capsys):
    root, _ = setup
    data, _ = run(setup, tmp_path, capsys, "pre_concatenated", "--audio-dir", str(root / "tree"))
    assert data["config"]["max_sequence_length"] == 3000 and data["config"]["max_files"] == 1
    long_files = tmp_path / "their_cluster" / "librilight_1hour_sequences"
    for name in ("1hour_b", "1hour_a"):
        write_chapter(long_files, name, tone(0.5, 16000, 200.0, 1), 16000, None)
    data, _ = run(setup, tmp_path, capsys, "pre_concatenated")
    assert [sequence["id"] for sequence in data["sequences"]] == ["1hour_a.flac"]
    assert data["config"]["layout"] == "files"
    data, _ = run(setup, tmp_path, capsys, "streaming_section", "--audio-dir", str(root / "tree"))
    assert data["config"]["max_sequence_length"] == 24000


def test_book_flags_choose_other_books(setup, tmp_path, capsys):
    root, _ = setup
    data, _ = run(setup, tmp_path, capsys, "single_book_named", "--audio-dir", str(root / "tree"),
                  "--book", "100/zz_other_book", "--book", "200/second_book_64kb_mp3")
    assert [sequence["id"] for sequence in data["sequences"]] == ["100/zz_other_book", "200/second_book_64kb_mp3"]
    data, _ = run(setup, tmp_path, capsys, "single_book_default", "--audio-dir", str(root / "tree"), "--all-books")
    assert [sequence["id"] for sequence in data["sequences"]] == sorted(BOOKS)


def test_deprecated_keys_are_printed_by_a_plain_run(setup, tmp_path):
    """Acceptance 5, as a user runs it: `python -m moshi_eval.librilight --config old.yaml` in a fresh process."""
    _, model_flags = setup
    write_codes(tmp_path / "codes", "only", random_codes(torch.Generator().manual_seed(0), 8, 10, 63))
    old = tmp_path / "old.yaml"
    old.write_text(f"codes: {tmp_path / 'codes'}\nuser_stream: zero\npositions: [8]\nwindow: 4\n"
                   "use_fixed_streaming: true\nlibrilight_streaming:\n  ttt_verification_enabled: true\n")
    completed = subprocess.run(
        [sys.executable, "-m", "moshi_eval.librilight", "--config", str(old), *model_flags[:4], "--device", "cpu",
         "--output", str(tmp_path / "old.json"), "--quiet"],
        capture_output=True, text=True, env=subprocess_env(), timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    notes = [line for line in completed.stderr.splitlines() if "deprecated" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: {old}: deprecated key(s) ")
    assert "librilight_streaming.ttt_verification_enabled, use_fixed_streaming ignored" in notes[0]

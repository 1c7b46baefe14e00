"""Discovery of sequences: LibriLight trees with filters and seeded selection, plain audio files, codes files."""

from __future__ import annotations

import pytest
import torch
from librilight_helpers import chapter_metadata, tone, write_chapter, write_codes

from moshi_eval.librilight.data import discover_sequences
from moshi_eval.librilight.prepare import load_codes_file
from moshi_eval.scoring.errors import DataError
from moshi_eval.scoring.scorer import ModelShape


def write_books(root, specs):
    """specs: (speaker, book, seconds per chapter, snr, genres)."""
    for speaker, book, seconds, snr, genres in specs:
        for chapter in range(2):
            write_chapter(root / speaker / book, f"{chapter:02d}", tone(seconds, 16000, 200.0, 0), 16000,
                          chapter_metadata(snr=snr, genres=genres))


SPECS = [("1", "a", 1.0, 20.0, ("Fiction",)), ("1", "b", 0.5, 20.0, ("Fiction",)),
         ("2", "c", 1.0, 3.0, ("Fiction",)), ("3", "d", 1.0, 20.0, ("*Poetry",)), ("3", "e", 1.0, 15.0, ("History",))]


def ids(discovery):
    return [source.sequence_id for source in discovery.sequences]


def test_filters_and_listed_reasons(tmp_path):
    write_books(tmp_path, SPECS)
    assert ids(discover_sequences(audio_dir=str(tmp_path))) == ["1/a", "1/b", "2/c", "3/d", "3/e"]
    found = discover_sequences(audio_dir=str(tmp_path), min_snr=10, min_duration=1.5, exclude_genres=["poetry"])
    assert ids(found) == ["1/a", "3/e"]
    reasons = {skip.path: skip.reason for skip in found.skipped}
    assert "min_duration" in reasons["1/b"] and "SNR" in reasons["2/c"] and "poetry" in reasons["3/d"]
    assert discover_sequences(audio_dir=str(tmp_path), max_chapters=1).sequences[0].duration == pytest.approx(1.0)
    assert discover_sequences(audio_dir=str(tmp_path)).sequences[0].duration == pytest.approx(2.0)


def test_seeded_selection_is_deterministic(tmp_path):
    write_books(tmp_path, SPECS)
    first = ids(discover_sequences(audio_dir=str(tmp_path), num_sequences=3, seed=5))
    assert first == ids(discover_sequences(audio_dir=str(tmp_path), num_sequences=3, seed=5))
    assert len(first) == 3 and first == sorted(first)
    others = {tuple(ids(discover_sequences(audio_dir=str(tmp_path), num_sequences=3, seed=s))) for s in range(8)}
    assert len(others) > 1


def test_plain_audio_files_and_lists(tmp_path):
    for name in ("x", "y"):
        write_chapter(tmp_path / "plain", name, tone(0.5, 24000, 300.0, 1), 24000, None)
    assert ids(discover_sequences(audio_dir=str(tmp_path / "plain"))) == ["x.flac", "y.flac"]
    listing = tmp_path / "list.txt"
    listing.write_text("plain/y.flac\n# comment\nplain/x.flac\n")
    assert ids(discover_sequences(audio_files=[str(listing)])) == ["x.flac", "y.flac"]
    with pytest.raises(DataError, match="not found"):
        discover_sequences(audio_files=[str(tmp_path / "nope.wav")])
    with pytest.raises(DataError, match="exactly one"):
        discover_sequences(audio_dir=str(tmp_path), codes=[str(tmp_path)])


def test_codes_files_are_checked(tmp_path):
    shape = ModelShape(dep_q=8, n_q=16, card=40, zero_token_id=-1, delays=(0,) * 17)
    own = write_codes(tmp_path, "own", torch.randint(0, 40, (8, 30)))
    both = write_codes(tmp_path, "both", torch.cat([torch.randint(0, 40, (8, 30)), torch.full((8, 30), -1)]))
    assert ids(discover_sequences(codes=[str(tmp_path)])) == ["both", "own"]
    own_codes, user = load_codes_file(own, shape, max_frames=20)
    assert own_codes.shape == (8, 20) and user is None
    assert load_codes_file(both, shape, max_frames=100)[1].shape == (8, 30)
    bad_shape = write_codes(tmp_path / "bad", "k12", torch.zeros(12, 5, dtype=torch.long))
    with pytest.raises(DataError, match="12 codebooks"):
        load_codes_file(bad_shape, shape, 100)
    bad_range = write_codes(tmp_path / "bad", "range", torch.full((8, 5), 40))
    with pytest.raises(DataError, match=r"\[0, 40\)"):
        load_codes_file(bad_range, shape, 100)
    not_codes = tmp_path / "codes.txt"
    not_codes.write_text("x")
    with pytest.raises(DataError, match="safetensors"):
        discover_sequences(codes=[str(not_codes)])


def test_books_select_exactly_those_books(tmp_path):
    write_books(tmp_path, SPECS)
    assert ids(discover_sequences(audio_dir=str(tmp_path), books=["3/e", "1/a"])) == ["1/a", "3/e"]
    with pytest.raises(DataError) as error:
        discover_sequences(audio_dir=str(tmp_path), books=["1/aa", "9/zz"])
    message = str(error.value)
    assert "book(s) not found in" in message and "1/aa (close matches: 1/a" in message
    assert "9/zz (no close match)" in message and "5 book(s)" in message
    with pytest.raises(DataError, match="read as plain audio files"):
        discover_sequences(audio_dir=str(tmp_path), books=["1/a"], layout="files")
    with pytest.raises(DataError, match="select books of a LibriLight tree"):
        discover_sequences(codes=[str(tmp_path)], books=["1/a"])


def test_books_read_only_what_they_name(tmp_path, monkeypatch):
    from moshi_eval.librilight import data

    write_books(tmp_path, SPECS)
    read = []
    original = data.read_chapter
    monkeypatch.setattr(data, "read_chapter", lambda path, with_metadata: read.append(path) or original(
        path, with_metadata))
    discover_sequences(audio_dir=str(tmp_path), books=["2/c"])
    assert {path.parent.name for path in read} == {"c"}


def test_max_files_takes_the_first_in_name_order(tmp_path):
    write_books(tmp_path, SPECS)
    assert ids(discover_sequences(audio_dir=str(tmp_path), max_files=2)) == ["1/a", "1/b"]
    for name in ("c", "a", "b"):
        write_chapter(tmp_path / "files", name, tone(0.5, 16000, 220.0, 0), 16000, None)
    assert ids(discover_sequences(audio_dir=str(tmp_path / "files"), max_files=2)) == ["a.flac", "b.flac"]


def test_chapters_without_metadata_are_scored_unless_a_filter_needs_it(tmp_path):
    for chapter in range(2):
        write_chapter(tmp_path / "1" / "plain", f"{chapter:02d}", tone(1.0, 16000, 200.0, chapter), 16000,
                      None if chapter == 1 else chapter_metadata())
    found = discover_sequences(audio_dir=str(tmp_path))
    assert ids(found) == ["1/plain"] and found.skipped == []
    assert [chapter.metadata is None for chapter in found.sequences[0].chapters] == [False, True]
    for setting in ({"min_snr": 5.0}, {"exclude_genres": ["poetry"]}):
        with pytest.raises(DataError, match=r"01.flac has no LibriLight metadata \(.json\), which "
                                            f"{next(iter(setting))} needs"):
            discover_sequences(audio_dir=str(tmp_path), **setting)

"""Acceptance 2 (data): gold files read by column name, the pairing rules, StoryCloze pairing, seeded subsets, and a
clear error for every kind of bad input."""

from __future__ import annotations

import csv
import shutil

import pytest
from paper_metrics_helpers import DATA, copy_sets, set_dirs

from moshi_eval.paper_metrics.config import PaperMetricsConfig
from moshi_eval.paper_metrics.data import load_benchmark
from moshi_eval.paper_metrics.pairs import select_pairs
from moshi_eval.paper_metrics.storycloze import story_pairs
from moshi_eval.paper_metrics.zerospeech import SBLIMP, SWUGGY, gold_pairs
from moshi_eval.scoring.errors import DataError


def gold_rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def write_rows(path, columns, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_swuggy_pairs_every_word_with_every_non_word_of_its_id_and_voice():
    folder = DATA / "lexical" / "dev"
    rows = gold_rows(folder / "gold.csv")
    assert list(rows[0])[:2] == ["word", "correct"]  # the committed gold file has its columns shuffled
    pairs = gold_pairs(SWUGGY, folder, folder / "gold.csv")
    expected = set()
    for good in rows:
        for bad in rows:
            if good["correct"] == "1" and bad["correct"] == "0" and (good["id"], good["voice"]) == (bad["id"],
                                                                                                    bad["voice"]):
                expected.add((f"{good['filename']}.wav", f"{bad['filename']}.wav"))
    assert {pair.key for pair in pairs} == expected and len(pairs) == len(expected) == 8
    assert all(pair.good.path.is_file() and pair.bad.path.is_file() for pair in pairs)
    assert {tuple(pair.group) for pair in pairs} == {("id", "voice")}


def test_sblimp_pairs_rows_of_the_same_id_voice_type_subtype():
    folder = DATA / "syntactic" / "dev"
    rows = gold_rows(folder / "gold.csv")
    pairs = gold_pairs(SBLIMP, folder, folder / "gold.csv")
    key = ("id", "voice", "type", "subtype")
    by_file = {f"{row['filename']}.wav": row for row in rows}
    assert len(pairs) == len(rows) // 2 == 6
    for pair in pairs:
        good, bad = by_file[pair.good.file], by_file[pair.bad.file]
        assert (good["correct"], bad["correct"]) == ("1", "0")
        assert all(good[column] == bad[column] == pair.group[column] for column in key)


def test_gold_filenames_with_or_without_extension(tmp_path):
    folder = copy_sets(tmp_path / "sets") / "lexical" / "dev"
    rows = gold_rows(folder / "gold.csv")
    for row in rows[::2]:
        row["filename"] += ".wav"
    write_rows(folder / "gold.csv", list(rows[0]), rows)
    assert {pair.key for pair in gold_pairs(SWUGGY, folder, folder / "gold.csv")} == {
        pair.key for pair in gold_pairs(SWUGGY, DATA / "lexical" / "dev", DATA / "lexical" / "dev" / "gold.csv")}


@pytest.fixture
def lexical(tmp_path):
    folder = copy_sets(tmp_path / "sets") / "lexical" / "dev"
    return folder, gold_rows(folder / "gold.csv")


def test_missing_audio_file_named_in_gold(lexical):
    folder, rows = lexical
    (folder / f"{rows[4]['filename']}.wav").unlink()
    with pytest.raises(DataError, match=rf"gold.csv, line 6: names '{rows[4]['filename']}.wav', but .* not exist"):
        gold_pairs(SWUGGY, folder, folder / "gold.csv")


def test_group_without_both_sides(lexical):
    folder, rows = lexical
    kept = [row for row in rows if not (row["id"] == "2" and row["voice"] == "Bea" and row["correct"] == "0")]
    write_rows(folder / "gold.csv", list(rows[0]), kept)
    with pytest.raises(DataError, match="group id='2', voice='Bea' .* has no non-word"):
        gold_pairs(SWUGGY, folder, folder / "gold.csv")
    syntactic = folder.parents[1] / "syntactic" / "dev"
    rows = gold_rows(syntactic / "gold.csv")
    write_rows(syntactic / "gold.csv", list(rows[0]), [row for row in rows if row["filename"] != "s3_alex_1"])
    with pytest.raises(DataError, match="type='determiner_noun_agreement'.* has no grammatical"):
        gold_pairs(SBLIMP, syntactic, syntactic / "gold.csv")


@pytest.mark.parametrize("damage, message", [
    (lambda text: text.replace("voice", "speaker", 1), "lacks the column.s. voice .found word, correct, speaker"),
    (lambda text: text.replace(",1,Alex,", ",yes,Alex,", 1), r"line 2: 'correct' must be 0 or 1, got 'yes'"),
    (lambda text: text.replace(",1,Alex,w1_alex_0,1,", ",1,Alex,w1_alex_0,,", 1), "line 2: empty 'id'"),
    (lambda text: text + "brick,1,Alex\n", "line 16: 3 values for 6 columns"),
    (lambda text: text.splitlines()[0] + "\n", "a header but no rows"),
    (lambda text: "", "empty gold file"),
])
def test_malformed_gold_files(lexical, damage, message):
    folder, _ = lexical
    gold = folder / "gold.csv"
    gold.write_text(damage(gold.read_text()))
    with pytest.raises(DataError, match=message):
        gold_pairs(SWUGGY, folder, gold)


def test_unreadable_or_absent_gold_and_folder(lexical, tmp_path):
    folder, _ = lexical
    (folder / "gold.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="cannot read the gold file as UTF-8"):
        gold_pairs(SWUGGY, folder, folder / "gold.csv")
    with pytest.raises(DataError, match="gold file not found"):
        gold_pairs(SWUGGY, folder, tmp_path / "none.csv")
    with pytest.raises(DataError, match="swuggy audio folder not found"):
        gold_pairs(SWUGGY, tmp_path / "nowhere", folder / "gold.csv")
    with pytest.raises(DataError, match="lacks the column.s. frequency, word"):  # sBLIMP's gold file for sWUGGY
        gold_pairs(SWUGGY, folder, DATA / "syntactic" / "dev" / "gold.csv")


def test_story_pairs_by_uuid_in_subfolders_with_odd_files_listed(tmp_path):
    folder = shutil.copytree(DATA / "sstory", tmp_path / "sstory")
    nested = folder / "part2"
    nested.mkdir()
    for path in folder.glob("3_*"):
        path.rename(nested / path.name)
    shutil.copy(nested / "3_0a1b2c3d-0003_correct.wav", folder / "notes.wav")
    pairs, ignored = story_pairs("sstory", folder)
    assert [pair.group["uuid"] for pair in pairs] == ["0a1b2c3d-0001", "0a1b2c3d-0002", "0a1b2c3d-0003"]
    assert all(pair.good.file.endswith("_correct.wav") and pair.bad.file.endswith("_incorrect.wav") for pair in pairs)
    assert pairs[2].good.file == "part2/3_0a1b2c3d-0003_correct.wav"
    assert ignored == ["notes.wav"]


def test_story_errors(tmp_path):
    folder = shutil.copytree(DATA / "tstory", tmp_path / "tstory")
    (folder / "2_9f8e7d6c-0002_incorrect.wav").unlink()
    with pytest.raises(DataError, match="story 9f8e7d6c-0002 has no 'incorrect' ending"):
        story_pairs("tstory", folder)
    shutil.copy(folder / "2_9f8e7d6c-0002_correct.wav", folder / "2_9f8e7d6c-0002_incorrect.wav")
    shutil.copy(folder / "1_9f8e7d6c-0001_correct.wav", folder / "7_9f8e7d6c-0001_correct.wav")
    with pytest.raises(DataError, match="story 9f8e7d6c-0001 has 2 'correct' ending"):
        story_pairs("tstory", folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no <n>_<uuid>_correct.wav"):
        story_pairs("tstory", empty)


def test_subsets_are_seeded_and_recorded():
    config = PaperMetricsConfig(**set_dirs(), swuggy_max_pairs=5, seed=3)
    every = load_benchmark(config.replace(swuggy_max_pairs=None), "swuggy").pairs
    chosen = load_benchmark(config, "swuggy")
    assert (chosen.total_pairs, len(chosen.pairs), chosen.max_pairs) == (8, 5, 5)
    assert [pair.key for pair in chosen.pairs] == [pair.key for pair in every if pair in chosen.pairs]
    assert [p.key for p in load_benchmark(config, "swuggy").pairs] == [p.key for p in chosen.pairs]
    others = {tuple(p.key for p in select_pairs(every, 5, seed)) for seed in range(6)}
    assert len(others) > 1
    assert select_pairs(every, 100, 0) == sorted(every, key=lambda pair: pair.key)
    assert {u.file for u in chosen.utterances} == {f for pair in chosen.pairs for f in pair.key}


def test_config_errors():
    with pytest.raises(ValueError, match="stream must be one of own, user"):
        PaperMetricsConfig(stream="both")
    with pytest.raises(ValueError, match="swuggy_max_pairs must be at least 1"):
        PaperMetricsConfig(swuggy_dir="x", swuggy_max_pairs=0)
    with pytest.raises(ValueError, match="sblimp_gold is given without sblimp_dir"):
        PaperMetricsConfig(sblimp_gold="gold.csv")
    with pytest.raises(ValueError, match="drop swuggy_max_pairs"):
        PaperMetricsConfig(swuggy_dir="x", swuggy_max_pairs=3, zerospeech_submission="out")
    with pytest.raises(ValueError, match="codebook_weights must be non-negative"):
        PaperMetricsConfig(codebook_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="text_policy must be one of greedy, pad, zero"):
        PaperMetricsConfig(text_policy="sample")

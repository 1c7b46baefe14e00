"""Acceptance 5: training YAML files with our users' structure and keys (`training_yamls.py`, shared with the LibriLight
tests) run the metrics their `paper_metrics:` section names: through `PaperMetricsEvaluator.evaluate_all` (their
scripts' call) the four benchmarks and, when the section names LibriLight data, LibriLight on the book it selects;
through `python -m moshi_eval.paper_metrics --config` the four benchmarks."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from librilight_helpers import chapter_metadata, tone, write_chapter
from paper_metrics_helpers import DATA, demo_mimi, small_lm
from test_paper_metrics_cli import checkpoint  # noqa: F401 - the module-scoped checkpoint fixture
from training_yamls import SECTIONS, training_yaml

from moshi_eval import PaperMetricsEvaluator
from moshi_eval.paper_metrics.cli import main

pytestmark = [pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning"),
              pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.SettingsNoteWarning")]

EXPECTED_PAIRS = {"swuggy": 8, "sblimp": 6, "sstory": 3, "tstory": 2}
CHAPTER_SECONDS = 0.4  # 5 frames at 12.5 Hz
BOOK_CHAPTERS = {"100/emerald_city_librivox_64kb_mp3": 2, "200/second_book_64kb_mp3": 3, "100/zz_other_book": 4}
LIBRILIGHT_FRAMES = {  # what each section's selection scores: its book's first max_chapters chapters, or one file
    "single_book_named": 2 * 5,  # librilight_max_chapters 3, the book has 2
    "single_book_other_named": 3 * 5,  # librilight_max_chapters 4, the book has 3
    "single_book_default": 1 * 5,  # librilight_max_chapters 1, the old evaluator's default book
    "pre_concatenated": 10,  # the one 0.8 s file of librilight_concatenated_dir
}


@pytest.fixture(scope="module")
def their_cluster(tmp_path_factory):
    """The folders their YAMLs name: the four sets where the files expect them, and LibriLight data for every kind."""
    root = tmp_path_factory.mktemp("their_cluster")
    for name, source in (("swuggy", "lexical/dev"), ("sblimp", "syntactic/dev")):
        shutil.copytree(DATA / source, root / name / "audio")
        shutil.move(root / name / "audio" / "gold.csv", root / name / "gold.csv")
    shutil.copytree(DATA / "tstory", root / "tsc")
    shutil.copytree(DATA / "sstory", root / "ssc")
    for book, chapters in BOOK_CHAPTERS.items():
        for chapter in range(chapters):
            write_chapter(root / "librilight" / "medium" / book, f"{chapter:02d}",
                          tone(CHAPTER_SECONDS, 16000, 150 + 40 * chapter, chapter), 16000, chapter_metadata())
    write_chapter(root / "librilight_1hour_sequences", "sequence_000", tone(0.8, 16000, 170, 3), 16000, None)
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MOSHI_EVAL_CACHE", str(tmp_path_factory.getbasetemp() / "their_codes_cache"))


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_evaluate_all_runs_what_the_section_names(their_cluster, kind):
    section = yaml.safe_load(training_yaml(kind, their_cluster))["paper_metrics"]
    with pytest.warns(UserWarning):
        evaluator = PaperMetricsEvaluator(mimi_encoder=demo_mimi(), interleaved_tokenizer=None, device="cpu",
                                          config=section)
    metrics = evaluator.evaluate_all(small_lm())
    assert {name: metrics[f"{name}_samples"] for name in EXPECTED_PAIRS} == EXPECTED_PAIRS
    assert evaluator.base.other_stream == "silence" and evaluator.base.stream == "own"
    assert 0 <= metrics["paper_metrics_avg"] <= 1
    if kind in LIBRILIGHT_FRAMES:
        assert metrics["librilight_samples"] == LIBRILIGHT_FRAMES[kind]
    else:
        assert not any(key.startswith("librilight_") for key in metrics)


def test_command_line_runs_the_four_benchmarks_of_a_training_yaml(their_cluster, checkpoint, tmp_path, capsys):  # noqa: F811
    config = tmp_path / "train.yaml"
    config.write_text(training_yaml("single_book_named", their_cluster))
    output = tmp_path / "results.json"
    assert main(["--config", str(config), *checkpoint, "--output", str(output), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "reading its 'paper_metrics' section; ignoring the" in err and "'ttt' section is not applied" in err
    assert "LibriLight keys (librilight_audio_dir" in err
    data = json.loads(output.read_text())
    assert {name: data[f"{name}_samples"] for name in EXPECTED_PAIRS} == EXPECTED_PAIRS
    assert data["settings"]["other_stream"] == "silence"

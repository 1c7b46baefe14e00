"""Acceptance 7: the command line end to end (local weights, eval.yaml with legacy keys, JSON, PNG), `compare`,
and `--demo`."""

from __future__ import annotations

import json

import pytest
from librilight_helpers import assert_results_close, comparable, save_demo_checkpoint, write_tree_for_cli

from moshi_eval.librilight import evaluate_librilight
from moshi_eval.librilight.__main__ import main as program
from moshi_eval.librilight.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")


def test_cli_end_to_end_with_legacy_yaml(tmp_path, capsys):
    lm, mimi, model_flags = save_demo_checkpoint(tmp_path / "checkpoint")
    tree = write_tree_for_cli(tmp_path / "tree")
    (tmp_path / "eval.yaml").write_text(
        f"librilight_audio_dir: {tree}\nlibrilight_max_chapters: 2\nlibrilight_streaming:\n"
        "  max_sequence_length: 40\n  ttt_verification_enabled: true\npositions: [20, 30]\nwindow: 10\n")
    output = tmp_path / "out" / "results.json"
    status = main(["--config", str(tmp_path / "eval.yaml"), *model_flags, "--batch-size", "2", "--output", str(output),
                   "--plot", str(tmp_path / "out" / "curve.png"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert status == 0
    captured = capsys.readouterr()
    assert "librilight_loss_20" in captured.out and "sequences: 2 scored, 0 skipped" in captured.out
    notes = [line for line in captured.err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "librilight_streaming.ttt_verification_enabled" in notes[0]
    data = json.loads(output.read_text())
    assert (tmp_path / "out" / "curve.png").stat().st_size > 0
    assert data["config"]["max_chapters"] == 2 and data["config"]["max_sequence_length"] == 40
    assert data["config"]["user_stream"] == "silence" and data["model"]["ttt_layers"] == 2
    assert [s["num_frames"] for s in data["sequences"]] == [40, 40]
    api = evaluate_librilight(lm, mimi, audio_dir=str(tree), max_chapters=2, max_sequence_length=40,
                              positions=[20, 30], window=10, cache_dir=str(tmp_path / "cache"),
                              progress=False)
    expected = comparable(api.to_dict())
    got = comparable(data)
    got["model"]["source"] = expected["model"]["source"] = {}
    assert_results_close(got, expected)

    compare_png = tmp_path / "compare.png"
    assert program(["compare", str(output), str(output), "--labels", "a", "b", "--output", str(compare_png)]) == 0
    assert compare_png.stat().st_size > 0


def test_cli_reports_bad_settings(tmp_path, capsys):
    (tmp_path / "eval.yaml").write_text("librilight_audio_dir: /nowhere\nnot_a_key: 1\n")
    assert main(["--config", str(tmp_path / "eval.yaml")]) == 2
    assert "not_a_key" in capsys.readouterr().err
    assert main(["--codes", str(tmp_path)]) == 2
    assert "no model given" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path, capsys):
    output = tmp_path / "demo.json"
    assert main(["--demo", "--output", str(output), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err
    data = json.loads(output.read_text())
    assert data["model"]["source"]["random_weights"] is True and data["model"]["ttt_layers"] > 0
    assert data["num_sequences"] == 4 and data["complete"] is True
    assert all(data[f"librilight_loss_{p}"] is not None for p in (200, 300, 400))
    assert len({round(sequence["mean_loss"], 6) for sequence in data["sequences"]}) == 4
    assert output.with_suffix(".png").stat().st_size > 0

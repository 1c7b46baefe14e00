"""Issue 19, one dashboard-shaped results file: `python -m moshi_eval.paper_metrics --config train.yaml` with a
`paper_metrics:` section shaped like the moshi-finetune TTT fork's (`training_yamls.py`) that names LibriLight writes
one JSON with the benchmarks' keys, `paper_metrics_avg` and LibriLight's keys (every key the fork's dashboard reads,
null where undefined); `<bench>_max_pairs: 0` skips that benchmark with a note; `ttt_fig5_enable` records the TTT
inner losses into that file; `evaluate_all` keeps `librilight_progression`; Ctrl-C in the LibriLight part names its
sequences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from librilight_helpers import save_demo_checkpoint
from paper_metrics_helpers import demo_mimi, small_lm
from test_paper_metrics_cli import checkpoint  # noqa: F401 - the module-scoped checkpoint fixture
from test_paper_metrics_training_yamls import EXPECTED_PAIRS, LIBRILIGHT_FRAMES, private_cache, their_cluster  # noqa: F401
from training_yamls import training_yaml

from moshi_eval import PaperMetricsEvaluator
from moshi_eval.librilight.cli import main as librilight_main
from moshi_eval.paper_metrics.cli import main as paper_metrics_main
from moshi_eval.paper_metrics.pairs import BENCHMARKS
from moshi_eval.training_metrics import DASHBOARD_KEYS
from moshi_eval.training_metrics import main as program

pytestmark = [pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning"),
              pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.SettingsNoteWarning")]

# What the fork's dashboard (dashboard/aggregate_paper_metrics.py, dashboard.js) reads from paper_metrics_results.json,
# and the LibriLight keys its evaluator's evaluate_all returned.
THEIR_KEYS = {
    "sblimp_accuracy", "sblimp_samples", "swuggy_accuracy", "swuggy_samples", "tstory_accuracy", "tstory_samples",
    "sstory_accuracy", "sstory_samples", "librilight_perplexity_8k", "librilight_perplexity_16k",
    "librilight_perplexity_24k", "librilight_slope", "librilight_samples", "paper_metrics_avg",
    "librilight_progression", "librilight_loss_8k", "librilight_loss_16k", "librilight_loss_24k",
}
BENCHMARK_KEYS = ("accuracy", "accuracy_sum", "accuracy_mean", "samples", "correct")


def write_yaml(folder, kind, cluster, **replaced) -> str:
    text = training_yaml(kind, cluster)
    for old, new in replaced.items():
        assert old in text
        text = text.replace(old, new)
    path = folder / f"{kind}.yaml"
    path.write_text(text)
    return str(path)


def run(main, argv, capsys) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err


def test_one_file_holds_the_benchmarks_and_librilight(their_cluster, checkpoint, tmp_path, capsys):  # noqa: F811
    config = write_yaml(tmp_path, "single_book_named", their_cluster)
    output = tmp_path / "paper_metrics_results.json"
    status, err = run(program, ["--config", config, *checkpoint, "--output", str(output), "--quiet"], capsys)
    assert status == 0, err
    assert "LibriLight keys (librilight_audio_dir" not in err  # they are read here, not left to another command
    data = json.loads(output.read_text())
    assert set(DASHBOARD_KEYS) == THEIR_KEYS and THEIR_KEYS <= set(data)
    side = json.loads((tmp_path / "paper_metrics_results.librilight.json").read_text())
    assert data["librilight"]["results"] == str(tmp_path / "paper_metrics_results.librilight.json")

    alone = tmp_path / "benchmarks_alone.json"
    status, _ = run(paper_metrics_main, ["--config", config, *checkpoint, "--output", str(alone), "--quiet"], capsys)
    assert status == 0
    benchmarks = json.loads(alone.read_text())
    assert {name: data[f"{name}_samples"] for name in BENCHMARKS} == EXPECTED_PAIRS
    for name in BENCHMARKS:
        for key in BENCHMARK_KEYS:
            assert data[f"{name}_{key}"] == benchmarks[f"{name}_{key}"]
    assert data["paper_metrics_avg"] == benchmarks["paper_metrics_avg"]
    assert data["utterances"] == benchmarks["utterances"]

    librilight = tmp_path / "librilight_alone.json"
    status, _ = run(librilight_main, ["--config", config, *checkpoint, "--output", str(librilight), "--quiet"], capsys)
    assert status == 0
    expected = json.loads(librilight.read_text())
    librilight_keys = [key for key in expected if key.startswith("librilight_")]
    assert {key: data[key] for key in librilight_keys} == {key: expected[key] for key in librilight_keys}
    assert {key: side[key] for key in librilight_keys} == {key: expected[key] for key in librilight_keys}
    assert data["librilight_samples"] == LIBRILIGHT_FRAMES["single_book_named"]
    assert isinstance(data["librilight_progression"], list)
    assert data["librilight_perplexity_8k"] is None and data["librilight_loss_24k"] is None  # the book is 10 frames
    assert "ttt_inner_losses" not in data


def test_max_pairs_zero_skips_that_benchmark(their_cluster, checkpoint, tmp_path, capsys):  # noqa: F811
    config = write_yaml(tmp_path, "single_book_named", their_cluster,
                        **{"swuggy_max_pairs: 12": "swuggy_max_pairs: 0"})
    output = tmp_path / "results.json"
    status, err = run(program, ["--config", config, *checkpoint, "--output", str(output), "--quiet"], capsys)
    assert status == 0, err
    assert "note: " in err and "swuggy_max_pairs: 0 skips swuggy" in err
    data = json.loads(output.read_text())
    assert data["swuggy_accuracy"] is None and data["swuggy_samples"] is None
    assert {name: data[f"{name}_samples"] for name in BENCHMARKS if name != "swuggy"} == {
        name: pairs for name, pairs in EXPECTED_PAIRS.items() if name != "swuggy"}
    assert data["settings"]["max_pairs"] == {"sblimp": 12, "sstory": 12, "tstory": 12}
    assert data["librilight_samples"] == LIBRILIGHT_FRAMES["single_book_named"]

    section = yaml.safe_load(Path(config).read_text())["paper_metrics"]
    with pytest.warns(UserWarning, match="swuggy_max_pairs: 0 skips swuggy"):
        evaluator = PaperMetricsEvaluator(demo_mimi(), None, "cpu", section)
    with pytest.raises(ValueError, match=r"swuggy is skipped by the section \(swuggy_max_pairs: 0\)"):
        evaluator.evaluate_swuggy(small_lm())
    every_skipped = {key: (0 if key.endswith("_max_pairs") else value) for key, value in section.items()
                     if not key.startswith("librilight_")}
    with pytest.warns(UserWarning, match="sblimp_max_pairs: 0 skips sblimp"):
        nothing = PaperMetricsEvaluator(demo_mimi(), None, "cpu", every_skipped)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        nothing.evaluate_all(small_lm())


def test_ttt_fig5_enable_records_the_inner_losses_in_that_file(their_cluster, tmp_path, capsys):  # noqa: F811
    lm, mimi, flags = save_demo_checkpoint(tmp_path / "ttt_checkpoint")
    config = write_yaml(tmp_path, "pre_concatenated", their_cluster)
    output = tmp_path / "results.json"
    status, err = run(program, ["--config", config, *flags, "--output", str(output), "--quiet"], capsys)
    assert status == 0, err
    data = json.loads(output.read_text())
    side = json.loads((tmp_path / "results.librilight.json").read_text())
    assert side["config"]["ttt_inner_losses"] is True
    assert data["ttt_inner_losses"] == side["ttt_inner_losses"]
    assert set(data["ttt_inner_losses"]) == {"0", "1"}
    assert {"position", "w0", "before", "after"} <= set(data["ttt_inner_losses"]["0"])
    assert data["librilight_samples"] == LIBRILIGHT_FRAMES["pre_concatenated"]

    section = yaml.safe_load(Path(config).read_text())["paper_metrics"]
    evaluator = PaperMetricsEvaluator(mimi, None, "cpu", section)
    metrics = evaluator.evaluate_all(lm)
    assert metrics["ttt_inner_losses"] == data["ttt_inner_losses"]
    assert metrics["librilight_progression"] == data["librilight_progression"] == []
    assert all(isinstance(value, int | float) for key, value in metrics.items()
               if key not in ("ttt_inner_losses", "librilight_progression"))
    with pytest.warns(UserWarning, match="ttt_fig5_enable: the model has no TTT layers; no inner losses recorded"):
        without_ttt = evaluator.evaluate_all(small_lm())
    assert "ttt_inner_losses" not in without_ttt and without_ttt["librilight_progression"] == []


def test_ctrl_c_in_the_librilight_part_speaks_of_its_sequences(their_cluster, checkpoint, tmp_path, capsys,  # noqa: F811
                                                               monkeypatch):
    from moshi_eval import training_metrics

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training_metrics, "evaluate_librilight", interrupted)
    config = write_yaml(tmp_path, "single_book_named", their_cluster)
    output = tmp_path / "paper_metrics_results.json"
    status, err = run(program, ["--config", config, *checkpoint, "--output", str(output), "--quiet"], capsys)
    assert status == 130
    store = tmp_path / "paper_metrics_results.librilight.sequences"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: 0 finished sequence(s) kept in {store}/; resume with: ")

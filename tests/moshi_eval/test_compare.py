"""`moshi_eval.compare` on results with known per-item values: values and differences as computed here, intervals
that cover the difference and have the width the bootstrap predicts (paired: the spread of the per-item differences;
unpaired: of both runs' items), warnings on settings that change the numbers, and one-line errors on bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from moshi.utils.files import write_json_atomic
from moshi_eval.compare import Bootstrap, compare_files
from moshi_eval.compare.cli import main
from moshi_eval.librilight.results import LibriLightResult
from moshi_eval.paper_metrics.pairs import BenchmarkSet, Pair, Utterance
from moshi_eval.paper_metrics.results import PaperMetricsResult
from moshi_eval.paper_metrics.scores import UtteranceScore
from moshi_eval.scoring.run import SequenceLosses

K = 4
Z95 = 1.959964


def librilight_file(path: Path, levels: np.ndarray, slopes: np.ndarray, lengths: list[int], ids: list[str],
                    **config) -> Path:
    """Sequence i loses `levels[i] + slopes[i] * t` nats at frame t on every codebook (codebook k adds 0.1 k)."""
    sequences = []
    for level, slope, length, sequence_id in zip(levels, slopes, lengths, ids):
        per_frame = level + slope * np.arange(length)
        losses = per_frame[:, None] + 0.1 * np.arange(K)[None, :]
        sequences.append(SequenceLosses(sequence_id, losses.astype(np.float32)))
    result = LibriLightResult(sequences, card=2048, frame_rate=12.5, positions=[200, 400], window=100, bin_size=20,
                              config={"text_policy": "greedy", "user_stream": "silence"} | config,
                              model={"dtype": "float32"})
    write_json_atomic(path, result.to_dict())
    return path


def half_width(interval: list[float]) -> float:
    return (interval[1] - interval[0]) / 2


@pytest.fixture(scope="module")
def items():
    rng = np.random.default_rng(7)
    n = 40
    return {"levels": rng.normal(3.0, 0.5, n), "shift": rng.normal(-0.1, 0.05, n), "slopes": rng.normal(0, 1e-3, n),
            "lengths": [400 if i % 4 else 300 for i in range(n)], "ids": [f"book{i}" for i in range(n)]}


def test_librilight_paired_values_differences_and_intervals(tmp_path, items):
    levels, shift = items["levels"], items["shift"]
    a = librilight_file(tmp_path / "a.json", levels, items["slopes"], items["lengths"], items["ids"])
    b = librilight_file(tmp_path / "b.json", levels + shift, items["slopes"] * 0.5, items["lengths"], items["ids"])
    comparison = compare_files([a, b], ["base", "ttt"])
    metrics = comparison["metrics"]
    assert comparison["runs"] == ["base", "ttt"] and comparison["kind"] == "librilight"
    assert comparison["bootstrap"] == {"resamples": 2000, "seed": 0, "confidence": 0.95, "unit": "sequences"}
    assert comparison["warnings"] == []
    data_a, data_b = (json.loads(path.read_text()) for path in (a, b))
    for name in ("librilight_loss_200", "librilight_loss_400", "librilight_mean_loss", "librilight_slope"):
        assert metrics[name]["values"] == [data_a[name], data_b[name]]
        assert metrics[name]["difference"][0] == 0 and metrics[name]["ci95"][0] is None
        assert metrics[name]["pairing"] == [None, "paired"]
    reaching = np.array(items["lengths"]) >= 400
    window_a = np.mean(levels[reaching] + items["slopes"][reaching] * 349.5 + 0.15)
    assert metrics["librilight_loss_400"]["values"][0] == pytest.approx(window_a, rel=1e-6)
    slope_change = -0.5 * items["slopes"]
    differences = {"librilight_loss_200": shift + slope_change * 149.5,
                   "librilight_loss_400": (shift + slope_change * 349.5)[reaching]}
    for name, per_item in differences.items():
        assert metrics[name]["difference"][1] == pytest.approx(per_item.mean(), abs=1e-5)
        low, high = metrics[name]["ci95"][1]
        assert low < metrics[name]["difference"][1] < high
        expected = Z95 * per_item.std() / math.sqrt(len(per_item))
        assert half_width(metrics[name]["ci95"][1]) == pytest.approx(expected, rel=0.2)
    for codebook in range(K):
        entry = metrics[f"librilight_mean_loss_codebook_{codebook}"]
        assert entry["values"] == [data_a["codebook_mean_losses"][codebook], data_b["codebook_mean_losses"][codebook]]
        assert entry["ci95"][1][0] < entry["difference"][1] < entry["ci95"][1][1]
    slope = metrics["librilight_slope"]
    assert slope["ci95"][1][0] < slope["difference"][1] < slope["ci95"][1][1]
    assert slope["difference"][1] == pytest.approx(data_b["librilight_slope"] - data_a["librilight_slope"])


def test_librilight_unpaired_when_the_sequences_differ(tmp_path, items):
    levels, n = items["levels"], len(items["levels"])
    lengths = [400] * n
    a = librilight_file(tmp_path / "a.json", levels, np.zeros(n), lengths, items["ids"])
    other = np.random.default_rng(8).normal(2.8, 0.3, n)
    b = librilight_file(tmp_path / "b.json", other, np.zeros(n), lengths, [f"other{i}" for i in range(n)])
    entry = compare_files([a, b])["metrics"]["librilight_loss_400"]
    assert entry["pairing"] == [None, "unpaired"]
    assert entry["difference"][1] == pytest.approx(other.mean() - levels.mean(), abs=1e-5)
    assert entry["ci95"][1][0] < entry["difference"][1] < entry["ci95"][1][1]
    expected = Z95 * math.sqrt(levels.var() / n + other.var() / n)
    assert half_width(entry["ci95"][1]) == pytest.approx(expected, rel=0.2)
    paired = compare_files([a, librilight_file(tmp_path / "c.json", other, np.zeros(n), lengths, items["ids"])])
    assert paired["metrics"]["librilight_loss_400"]["pairing"] == [None, "paired"]


def test_the_seed_is_recorded_and_fixes_the_intervals(tmp_path, items):
    n = len(items["levels"])
    a = librilight_file(tmp_path / "a.json", items["levels"], np.zeros(n), [400] * n, items["ids"])
    b = librilight_file(tmp_path / "b.json", items["levels"] + items["shift"], np.zeros(n), [400] * n, items["ids"])
    first, again = compare_files([a, b]), compare_files([a, b])
    other = compare_files([a, b], bootstrap=Bootstrap(resamples=500, seed=3))
    assert first == again and other["bootstrap"]["seed"] == 3 and other["bootstrap"]["resamples"] == 500
    assert other["metrics"]["librilight_mean_loss"]["ci95"] != first["metrics"]["librilight_mean_loss"]["ci95"]


def test_settings_that_change_the_numbers_are_one_warning(tmp_path, items, capsys):
    n = len(items["levels"])
    a = librilight_file(tmp_path / "a.json", items["levels"], np.zeros(n), [400] * n, items["ids"])
    b = librilight_file(tmp_path / "b.json", items["levels"], np.zeros(n), [400] * n, items["ids"], text_policy="pad",
                        user_stream="zero")
    assert main([str(a), str(b), "--labels", "A", "B", "--output", str(tmp_path / "cmp.json")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    expected = ("warning: the runs differ in settings that change the numbers: text_policy (A: greedy, B: pad); "
                "user_stream (A: silence, B: zero)")
    assert err == [expected]
    assert json.loads((tmp_path / "cmp.json").read_text())["warnings"] == [err[0].removeprefix("warning: ")]


# -- paper metrics -----------------------------------------------------------------------------------------------------


def paper_metrics_file(path: Path, good_sums: dict[str, np.ndarray], bad_sums: dict[str, np.ndarray],
                       ids: dict[str, list[int]], **settings) -> Path:
    """Pair i of a benchmark: `g<i>.wav` (10 tokens) scoring `good_sums[i]` against `b<i>.wav` (20 tokens) scoring
    `bad_sums[i]`."""
    benchmarks, scores = [], {}
    for name, goods in good_sums.items():
        pairs = []
        for i, good, bad in zip(ids[name], goods, bad_sums[name]):
            group = {"type": "syntax", "subtype": f"s{i % 3}"}
            pair = Pair(Utterance(name, f"g{i}.wav", Path("g.wav")), Utterance(name, f"b{i}.wav", Path("b.wav")), group)
            scores[pair.good.utterance_id] = UtteranceScore(10, 10, float(good), float(good) / 10)
            scores[pair.bad.utterance_id] = UtteranceScore(20, 20, float(bad), float(bad) / 20)
            pairs.append(pair)
        benchmarks.append(BenchmarkSet(name, Path(name), None, pairs, len(pairs)))
    settings = {"stream": "own", "other_stream": "zero", "normalization": "mean"} | settings
    result = PaperMetricsResult(benchmarks, scores, settings["normalization"], settings, {"dtype": "bfloat16"})
    write_json_atomic(path, result.to_dict())
    return path


def outcomes(good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    return np.where(good > bad, 1.0, np.where(good == bad, 0.5, 0.0))


@pytest.fixture(scope="module")
def pair_scores():
    rng = np.random.default_rng(1)
    sizes = {"swuggy": 300, "sblimp": 200}
    good = {name: -np.round(rng.uniform(5, 30, n)) for name, n in sizes.items()}
    bad = {name: -np.round(rng.uniform(10, 60, n)) for name, n in sizes.items()}
    return good, bad, {name: list(range(n)) for name, n in sizes.items()}


def test_paper_metrics_paired_accuracies_and_average(tmp_path, pair_scores):
    good, bad, ids = pair_scores
    better = {name: np.where(np.arange(len(values)) % 5 == 0, values + 15, values) for name, values in good.items()}
    a = paper_metrics_file(tmp_path / "a.json", good, bad, ids)
    b = paper_metrics_file(tmp_path / "b.json", better, bad, ids)
    comparison = compare_files([a, b])
    assert comparison["bootstrap"]["unit"] == "pairs" and comparison["items"]["a"] == {"swuggy": 300, "sblimp": 200}
    metrics = comparison["metrics"]
    assert list(metrics) == ["swuggy_accuracy", "swuggy_accuracy_mean", "swuggy_accuracy_sum", "sblimp_accuracy",
                             "sblimp_accuracy_mean", "sblimp_accuracy_sum", "paper_metrics_avg"]
    averages = []
    for name in good:
        per_pair = {"sum": (outcomes(good[name], bad[name]), outcomes(better[name], bad[name])),
                    "mean": (outcomes(good[name] / 10, bad[name] / 20), outcomes(better[name] / 10, bad[name] / 20))}
        for normalization, (before, after) in per_pair.items():
            for key in (f"{name}_accuracy_{normalization}",) + ((f"{name}_accuracy",) if normalization == "mean"
                                                                 else ()):
                entry = metrics[key]
                assert entry["values"] == pytest.approx([before.mean(), after.mean()], abs=1e-12)
                assert entry["difference"][1] == pytest.approx((after - before).mean(), abs=1e-12)
                assert entry["pairing"] == [None, "paired"]
                low, high = entry["ci95"][1]
                assert low <= entry["difference"][1] <= high
                differences = after - before
                expected = Z95 * differences.std() / math.sqrt(len(differences))
                assert half_width(entry["ci95"][1]) == pytest.approx(expected, rel=0.25)
                value_low, value_high = entry["value_ci95"][0]
                assert value_low < before.mean() < value_high
        averages.append(per_pair["mean"])
    average = metrics["paper_metrics_avg"]
    assert average["values"] == pytest.approx([np.mean([p[0].mean() for p in averages]),
                                               np.mean([p[1].mean() for p in averages])], abs=1e-12)
    assert average["pairing"] == [None, "paired"] and average["ci95"][1][0] <= average["difference"][1]
    assert average["difference"][1] <= average["ci95"][1][1]


def test_paper_metrics_unpaired_subsets_and_differing_normalization(tmp_path, pair_scores):
    good, bad, ids = pair_scores
    a = paper_metrics_file(tmp_path / "a.json", good, bad, ids)
    half = {name: values[::2] for name, values in good.items()}
    b = paper_metrics_file(tmp_path / "b.json", half, {name: v[::2] for name, v in bad.items()},
                           {name: i[::2] for name, i in ids.items()}, normalization="sum")
    comparison = compare_files([a, b])
    entry = comparison["metrics"]["swuggy_accuracy_mean"]
    assert entry["pairing"] == [None, "unpaired"]
    before = outcomes(good["swuggy"] / 10, bad["swuggy"] / 20)
    after = before[::2]
    expected = Z95 * math.sqrt(before.var() / len(before) + after.var() / len(after))
    assert half_width(entry["ci95"][1]) == pytest.approx(expected, rel=0.25)
    assert entry["ci95"][1][0] <= entry["difference"][1] <= entry["ci95"][1][1]
    expected = "the runs differ in settings that change the numbers: normalization (a: mean, b: sum)"
    assert comparison["warnings"] == [expected]


# -- bad input ---------------------------------------------------------------------------------------------------------


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_one_error_line(tmp_path, items, pair_scores, capsys):
    n = len(items["levels"])
    a = librilight_file(tmp_path / "a.json", items["levels"], np.zeros(n), [400] * n, items["ids"])
    good, bad, ids = pair_scores
    p = paper_metrics_file(tmp_path / "p.json", good, bad, ids)
    (tmp_path / "other.json").write_text(json.dumps({"accuracy": 0.5}))
    (tmp_path / "broken.json").write_text("{")
    out = str(tmp_path / "cmp.json")
    cases = {
        (str(a), str(tmp_path / "missing.json")): "missing.json: no such results file",
        (str(a), str(tmp_path / "other.json")): "other.json: not a moshi_eval.librilight or moshi_eval.paper_metrics",
        (str(a), str(tmp_path / "broken.json")): "broken.json: not a JSON results file",
        (str(a), str(p)): "cannot compare LibriLight results",
        (str(a),): "at least two result files",
        (str(a), str(a), "--labels", "x"): "--labels has 1 entries for 2 result files",
    }
    for arguments, message in cases.items():
        assert main([*arguments, "--output", out]) == 2
        assert message in one_error(capsys)
    edited = json.loads(a.read_text()) | {"librilight_mean_loss": 1.0}
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    assert main([str(a), str(tmp_path / "edited.json"), "--output", out]) == 2
    assert "librilight_mean_loss is 1.0 but its per-item data give" in one_error(capsys)
    assert not Path(out).exists()


def test_command_writes_table_json_and_figures(tmp_path, items, pair_scores, capsys):
    n = len(items["levels"])
    a = librilight_file(tmp_path / "base.json", items["levels"], np.zeros(n), items["lengths"], items["ids"])
    b = librilight_file(tmp_path / "ttt.json", items["levels"] + items["shift"], np.zeros(n), items["lengths"],
                        items["ids"])
    assert main([str(a), str(b), "--output", str(tmp_path / "cmp.json"), "--plot", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["metric", "base", "ttt", "ttt", "-", "base", "(95%", "interval)"]
    assert "librilight_loss_400" in out and "paired where both runs scored the same sequences (ttt: paired)" in out
    assert json.loads((tmp_path / "cmp.json").read_text())["runs"] == ["base", "ttt"]
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    good, bad, ids = pair_scores
    pa = paper_metrics_file(tmp_path / "pa.json", good, bad, ids)
    pb = paper_metrics_file(tmp_path / "pb.json", {k: v + 3 for k, v in good.items()}, bad, ids)
    assert main([str(pa), str(pb), str(pb), "--labels", "x", "y", "z", "--output", str(tmp_path / "p.json"),
                 "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_figures_draw_the_intervals(tmp_path, items, pair_scores):
    from moshi_eval.compare.plot import comparison_figure, librilight_figure
    from moshi_eval.compare.runs import read_runs

    n = len(items["levels"])
    paths = [librilight_file(tmp_path / "a.json", items["levels"], np.zeros(n), items["lengths"], items["ids"]),
             librilight_file(tmp_path / "b.json", items["levels"] + items["shift"], np.zeros(n), items["lengths"],
                             items["ids"])]
    runs = [(run.label, run.data) for run in read_runs(paths)]
    comparison = compare_files(paths)
    figure = comparison_figure(comparison, runs)
    overlay, differences = figure.axes
    assert [line.get_label() for line in overlay.get_lines()][:1] == ["a"]
    points, _, (bars,) = differences.containers[0].lines
    assert list(points.get_xdata()) == [200.0, 400.0]
    expected = [comparison["metrics"][f"librilight_loss_{p}"]["ci95"][1] for p in (200, 400)]
    np.testing.assert_allclose([segment[:, 1] for segment in bars.get_segments()], expected, rtol=1e-9)
    assert len(librilight_figure(runs).axes) == 1  # the overlay alone, as `moshi_eval.librilight compare` draws it
    good, bad, ids = pair_scores
    pa = paper_metrics_file(tmp_path / "pa.json", good, bad, ids)
    pb = paper_metrics_file(tmp_path / "pb.json", {k: v + 3 for k, v in good.items()}, bad, ids)
    comparison = compare_files([pa, pb])
    values_axis, differences_axis = comparison_figure(comparison, []).axes
    names = ["swuggy_accuracy", "sblimp_accuracy", "paper_metrics_avg"]
    assert [tick.get_text() for tick in values_axis.get_xticklabels()] == ["swuggy", "sblimp", "average"]
    _, _, (bars,) = differences_axis.containers[0].lines
    np.testing.assert_allclose([segment[:, 1] for segment in bars.get_segments()],
                               [comparison["metrics"][name]["ci95"][1] for name in names], rtol=1e-9)

"""Reading result files into runs: their scalar metrics, the per-item data each metric is recomputed from, and the
settings that change the numbers.

A LibriLight result (`moshi_eval.librilight`) gives the window losses `librilight_loss_<P>`, `librilight_mean_loss`,
`librilight_slope` and the per-codebook means `librilight_mean_loss_codebook_<k>`, each recomputable from its
`sequences` (their window losses, defined frames, per-codebook means and binned curves). A paper-metrics result
(`moshi_eval.paper_metrics`) gives `<bench>_accuracy`, `<bench>_accuracy_mean`, `<bench>_accuracy_sum` and
`paper_metrics_avg`, recomputable from the pairs of each benchmark (their outcome, or the two utterances' scores).
A resample of a run's items is a count per item (`statistics.Statistic`); items are named so that two runs can be told
to have scored the same ones.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..paper_metrics.scores import NORMALIZATIONS, pair_outcome
from .statistics import CurveSlope, MeanOfStatistics, RatioOfSums, Statistic

LIBRILIGHT = "librilight"
PAPER_METRICS = "paper_metrics"
KIND_NAMES = {LIBRILIGHT: "LibriLight", PAPER_METRICS: "paper-metrics"}
SEQUENCES = "sequences"


@dataclasses.dataclass
class Metric:
    """One scalar of a run: its reported value and how to recompute it from resampled items (None: no per-item data
    to resample)."""

    value: float | None
    statistic: Statistic | None


@dataclasses.dataclass
class Run:
    """One results file: its kind, metrics in report order, the ids of the items of each resampling group (the
    sequences, or a benchmark's pairs), the settings that change the numbers, and notes on what it lacks."""

    label: str
    path: str
    kind: str
    metrics: dict[str, Metric]
    items: dict[str, list[str]]
    settings: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)


def read_results(path: str | Path) -> Any:
    """The JSON of a results file (ValueError naming the file when it is missing or not JSON)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such results file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON results file ({error})") from error
    return data


def results_kind(data: Any, path: str | Path) -> str:
    """`librilight` or `paper_metrics`, told apart by the keys each writes."""
    keys = data.keys() if isinstance(data, dict) else set()
    if {"windows", "curve", "sequences", "positions"} <= keys:
        return LIBRILIGHT
    if {"benchmarks", "utterances", "paper_metrics_avg"} <= keys:
        return PAPER_METRICS
    raise ValueError(f"{path}: not a moshi_eval.librilight or moshi_eval.paper_metrics results file")


def read_run(path: str | Path, label: str) -> Run:
    data = read_results(path)
    kind = results_kind(data, path)
    try:
        run = librilight_run(data, path, label) if kind == LIBRILIGHT else paper_metrics_run(data, path, label)
    except (KeyError, TypeError, IndexError) as error:
        raise ValueError(f"{path}: malformed {KIND_NAMES[kind]} results ({type(error).__name__}: {error})") from error
    check_reproduced(run)
    return run


def read_runs(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[Run]:
    """The runs of result files, labelled by `labels` (one per file) or by their file names without extension (their
    paths if names repeat)."""
    if len(paths) < 2:
        raise ValueError(f"a comparison needs at least two result files, got {len(paths)}")
    if labels is None:
        stems = [Path(path).stem for path in paths]
        labels = stems if len(set(stems)) == len(stems) else [str(path) for path in paths]
    elif len(labels) != len(paths):
        raise ValueError(f"--labels has {len(labels)} entries for {len(paths)} result files")
    return [read_run(path, label) for path, label in zip(paths, labels)]


def check_reproduced(run: Run) -> None:
    """Every exactly recomputable metric must come out of the per-item data as reported; anything else means the
    file was edited or is not ours."""
    for name, metric in run.metrics.items():
        statistic = metric.statistic
        if metric.value is None or statistic is None or not statistic.exact:
            continue
        recomputed = statistic.full()
        if not np.isclose(recomputed, metric.value, rtol=1e-6, atol=1e-9):
            raise ValueError(f"{run.path}: {name} is {metric.value} but its per-item data give {recomputed}")


# -- LibriLight --------------------------------------------------------------------------------------------------------


def librilight_run(data: dict[str, Any], path: str | Path, label: str) -> Run:
    sequences = data["sequences"]
    metrics: dict[str, Metric] = {}
    for key, window in data["windows"].items():
        metrics[f"librilight_loss_{key}"] = Metric(window["loss"], window_statistic(sequences, key))
    metrics["librilight_mean_loss"] = Metric(data["librilight_mean_loss"],
                                             weighted_mean(sequences, "mean_loss", "samples"))
    metrics["librilight_slope"] = Metric(data["librilight_slope"], slope_statistic(sequences, data["curve"]))
    for codebook, value in enumerate(data.get("codebook_mean_losses", [])):
        metrics[f"librilight_mean_loss_codebook_{codebook}"] = Metric(value, codebook_statistic(sequences, codebook))
    notes = []
    if not data.get("complete", True):
        notes.append(f"{path} is a partial run (complete: false)")
    missing = [name for name, metric in metrics.items() if metric.value is not None and metric.statistic is None]
    if missing:
        notes.append(f"{path} keeps no per-sequence data for {', '.join(missing)} (results of an older version): "
                     "no interval for them")
    return Run(label, str(path), LIBRILIGHT, metrics, {SEQUENCES: [s["id"] for s in sequences]},
               librilight_settings(data), notes, data)


def window_statistic(sequences: list[dict[str, Any]], key: str) -> Statistic:
    """Mean over the sequences reaching the window `key` (`8k`) of their window loss."""
    losses = [s["window_losses"].get(key) for s in sequences]
    defined = np.array([loss is not None for loss in losses], dtype=float)
    values = np.array([0.0 if loss is None else loss for loss in losses])
    return RatioOfSums(SEQUENCES, values, defined)


def weighted_mean(sequences: list[dict[str, Any]], mean_key: str, count_key: str) -> Statistic | None:
    """The mean over every defined frame: per-sequence means weighted by their numbers of defined frames."""
    if any(count_key not in s for s in sequences):
        return None
    counts = np.array([s[count_key] for s in sequences], dtype=float)
    means = np.array([0.0 if s[mean_key] is None else s[mean_key] for s in sequences])
    return RatioOfSums(SEQUENCES, means * counts, counts)


def codebook_statistic(sequences: list[dict[str, Any]], codebook: int) -> Statistic | None:
    if any("codebook_samples" not in s for s in sequences):
        return None
    counts = np.array([s["codebook_samples"][codebook] for s in sequences], dtype=float)
    means = np.array([s["codebook_mean_losses"][codebook] or 0.0 for s in sequences])
    return RatioOfSums(SEQUENCES, means * counts, counts)


def slope_statistic(sequences: list[dict[str, Any]], curve: dict[str, Any]) -> Statistic | None:
    """The least-squares slope of the mean curve, from the sequences' curves in bins (its spread only: the reported
    slope is over single frames)."""
    if not sequences or any("curve" not in s for s in sequences):
        return None
    bin_size = curve["bin_size"]
    width = max(len(s["curve"]) for s in sequences)
    curves = np.full((len(sequences), width), np.nan)
    for row, sequence in enumerate(sequences):
        curves[row, : len(sequence["curve"])] = [np.nan if v is None else v for v in sequence["curve"]]
    return CurveSlope(SEQUENCES, curves, bin_size * np.arange(width) + (bin_size - 1) / 2)


def librilight_settings(data: dict[str, Any]) -> dict[str, Any]:
    config = data.get("config", {})
    settings = {
        "text_policy": config.get("text_policy"),
        "user_stream": config.get("user_stream"),
        "codebook_weights": data.get("codebook_weights"),
        "positions": data.get("positions"),
        "window": data.get("window"),
        "max_sequence_length": config.get("max_sequence_length"),
        "max_chapters": config.get("max_chapters"),
        "model dtype": data.get("model", {}).get("dtype"),
    }
    if config.get("text_policy") == "sample":
        settings["sampling"] = {name: config.get(name) for name in ("seed", "temp_text", "top_k_text")}
    return settings


# -- paper metrics -----------------------------------------------------------------------------------------------------


def paper_metrics_run(data: dict[str, Any], path: str | Path, label: str) -> Run:
    scores = {(u["benchmark"], u["file"]): u for u in data["utterances"]}
    metrics: dict[str, Metric] = {}
    items: dict[str, list[str]] = {}
    accuracies = []
    for benchmark, entry in data["benchmarks"].items():
        pairs = entry["pairs"]
        items[benchmark] = [pair_id(pair) for pair in pairs]
        chosen = RatioOfSums(benchmark, np.array([pair["outcome"] for pair in pairs], dtype=float),
                             np.ones(len(pairs)))
        metrics[f"{benchmark}_accuracy"] = Metric(data[f"{benchmark}_accuracy"], chosen)
        accuracies.append(chosen)
        for normalization in NORMALIZATIONS:
            outcomes = np.array([outcome(benchmark, pair, normalization, scores) for pair in pairs])
            metrics[f"{benchmark}_accuracy_{normalization}"] = Metric(
                data[f"{benchmark}_accuracy_{normalization}"], RatioOfSums(benchmark, outcomes, np.ones(len(pairs))))
    metrics["paper_metrics_avg"] = Metric(data["paper_metrics_avg"], MeanOfStatistics(accuracies) if accuracies
                                          else None)
    return Run(label, str(path), PAPER_METRICS, metrics, items, paper_metrics_settings(data), [], data)


def pair_id(pair: dict[str, Any]) -> str:
    """A pair's identity: its good and bad files."""
    return f"{pair['good']} > {pair['bad']}"


def outcome(benchmark: str, pair: dict[str, Any], normalization: str, scores: dict[tuple[str, str], Any]) -> float:
    key = "mean_logprob" if normalization == "mean" else "sum_logprob"
    good, bad = (scores[(benchmark, pair[side])][key] for side in ("good", "bad"))
    return pair_outcome(float("nan") if good is None else good, float("nan") if bad is None else bad)


def paper_metrics_settings(data: dict[str, Any]) -> dict[str, Any]:
    settings = data.get("settings", {})
    chosen = {name: settings.get(name) for name in ("stream", "other_stream", "text_policy", "codebook_weights",
                                                     "normalization")}
    return chosen | {"model dtype": data.get("model", {}).get("dtype")}

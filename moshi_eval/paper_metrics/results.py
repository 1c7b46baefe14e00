"""`PaperMetricsResult`: the scored utterances of a run and every number reported from them, as a JSON-ready dict."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from moshi.utils.files import write_json_atomic

from ..scoring.files import json_safe
from .pairs import BenchmarkSet, Pair
from .scores import NORMALIZATIONS, UtteranceScore, pair_outcome

FORMAT_VERSION = 1


@dataclasses.dataclass(eq=False)
class PaperMetricsResult(Mapping[str, Any]):
    """Results of a run; `scores` maps each utterance id (`<benchmark>/<file>`) to its scores.

    The result reads as the mapping `to_dict()` gives (`result["swuggy_accuracy"]`, `result.items()`), worked out
    once; `headline()` holds the flat metrics alone.
    """

    benchmarks: list[BenchmarkSet]
    scores: dict[str, UtteranceScore]
    normalization: str = "mean"
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    timing: dict[str, Any] = dataclasses.field(default_factory=dict)

    def outcome(self, pair: Pair, normalization: str) -> float:
        good = self.scores[pair.good.utterance_id].value(normalization)
        bad = self.scores[pair.bad.utterance_id].value(normalization)
        return pair_outcome(good, bad)

    def summary(self, prefix: str, pairs: list[Pair]) -> dict[str, Any]:
        """`<prefix>_accuracy` (chosen normalisation), `_accuracy_sum`, `_accuracy_mean`, `_samples`, `_correct`."""
        won = {normalization: sum(self.outcome(pair, normalization) for pair in pairs)
               for normalization in NORMALIZATIONS}
        count = len(pairs)
        accuracy = {normalization: won[normalization] / count if count else None for normalization in NORMALIZATIONS}
        return {
            f"{prefix}_accuracy": accuracy[self.normalization],
            f"{prefix}_accuracy_sum": accuracy["sum"],
            f"{prefix}_accuracy_mean": accuracy["mean"],
            f"{prefix}_samples": count,
            f"{prefix}_correct": won[self.normalization],
        }

    def headline(self) -> dict[str, Any]:
        """The flat metrics of every benchmark run and `paper_metrics_avg` (mean of their accuracies)."""
        flat: dict[str, Any] = {}
        for benchmark in self.benchmarks:
            flat.update(self.summary(benchmark.name, benchmark.pairs))
        accuracies = [flat[f"{b.name}_accuracy"] for b in self.benchmarks if flat[f"{b.name}_accuracy"] is not None]
        flat["paper_metrics_avg"] = sum(accuracies) / len(accuracies) if accuracies else None
        return flat

    def sblimp_breakdown(self, benchmark: BenchmarkSet) -> dict[str, Any]:
        """Accuracies per `type`, each with its `subtypes`."""
        by_type: dict[str, dict[str, list[Pair]]] = {}
        for pair in benchmark.pairs:
            by_type.setdefault(pair.group["type"], {}).setdefault(pair.group["subtype"], []).append(pair)
        breakdown = {}
        for type_name, subtypes in sorted(by_type.items()):
            pairs = [pair for members in subtypes.values() for pair in members]
            entry = strip_prefix(self.summary("x", pairs))
            entry["subtypes"] = {name: strip_prefix(self.summary("x", members))
                                 for name, members in sorted(subtypes.items())}
            breakdown[type_name] = entry
        return breakdown

    def to_dict(self) -> dict[str, Any]:
        data = self.headline()
        for benchmark in self.benchmarks:
            if benchmark.name == "sblimp":
                data["sblimp_per_type"] = self.sblimp_breakdown(benchmark)
        data["settings"] = self.settings
        data["benchmarks"] = {benchmark.name: self.benchmark_dict(benchmark) for benchmark in self.benchmarks}
        data["utterances"] = [self.utterance_dict(u) for b in self.benchmarks for u in b.utterances]
        data["model"] = self.model
        data["timing"] = self.timing
        data["format_version"] = FORMAT_VERSION
        return json_safe(data)

    def benchmark_dict(self, benchmark: BenchmarkSet) -> dict[str, Any]:
        pairs = [{"good": pair.good.file, "bad": pair.bad.file, **pair.group,
                  "outcome": self.outcome(pair, self.normalization)} for pair in benchmark.pairs]
        return {
            "directory": str(benchmark.directory),
            "gold": None if benchmark.gold is None else str(benchmark.gold),
            "split": benchmark.split,
            "total_pairs": benchmark.total_pairs,
            "max_pairs": benchmark.max_pairs,
            "utterances": len(benchmark.utterances),
            "ignored_files": benchmark.ignored_files,
            "pairs": pairs,
        }

    def utterance_dict(self, utterance: Any) -> dict[str, Any]:
        score = self.scores[utterance.utterance_id]
        return {"benchmark": utterance.benchmark, "file": utterance.file, "frames": score.frames,
                "tokens": score.tokens, "sum_logprob": score.sum_logprob, "mean_logprob": score.mean_logprob}

    @functools.cached_property
    def data(self) -> dict[str, Any]:
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def write_json(self, path: str | Path) -> dict[str, Any]:
        write_json_atomic(path, self.data)
        return self.data


def strip_prefix(summary: dict[str, Any]) -> dict[str, Any]:
    """`x_accuracy` -> `accuracy`, ... for the nested breakdowns."""
    return {key.removeprefix("x_"): value for key, value in summary.items()}

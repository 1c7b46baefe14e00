"""Scores of an utterance (weights, masks), pair outcomes with ties, and every accuracy reported from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moshi_eval.paper_metrics.pairs import BenchmarkSet, Pair, Utterance
from moshi_eval.paper_metrics.results import PaperMetricsResult
from moshi_eval.paper_metrics.scores import UtteranceScore, pair_outcome, utterance_score


def test_utterance_score_sums_defined_tokens_with_weights():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.5, 4.0, size=(6, 3)).astype(np.float32)
    losses[-1, 1:] = np.nan
    plain = utterance_score(losses)
    defined = np.isfinite(losses)
    assert (plain.frames, plain.tokens) == (6, 16)
    assert plain.sum_logprob == pytest.approx(-losses[defined].astype(np.float64).sum(), rel=1e-12)
    assert plain.mean_logprob == pytest.approx(plain.sum_logprob / 16, rel=1e-12)
    weighted = utterance_score(losses, [100.0, 1.0, 1.0])
    w = np.array([100.0, 1.0, 1.0])
    total = -(np.where(defined, losses, 0) * w).sum()
    assert weighted.sum_logprob == pytest.approx(total, rel=1e-12)
    assert weighted.mean_logprob == pytest.approx(total / (defined * w).sum(), rel=1e-12)
    assert weighted.tokens == 16
    with pytest.raises(ValueError, match="codebook_weights has 2 values"):
        utterance_score(losses, [1.0, 1.0])


def test_pair_outcomes_count_ties_as_half():
    assert pair_outcome(-1.0, -2.0) == 1.0
    assert pair_outcome(-2.0, -1.0) == 0.0
    assert pair_outcome(-1.5, -1.5) == 0.5
    assert pair_outcome(float("nan"), -1.0) == 0.0


def make_result(normalization: str) -> tuple[PaperMetricsResult, list[Pair]]:
    """sBLIMP-like pairs whose sum and mean decisions differ (longer good utterances), with one tie."""
    def utt(name: str) -> Utterance:
        return Utterance("sblimp", name, Path(name))

    scores = {
        "sblimp/g1": UtteranceScore(10, 80, -200.0, -2.5), "sblimp/b1": UtteranceScore(5, 40, -120.0, -3.0),
        "sblimp/g2": UtteranceScore(10, 80, -240.0, -3.0), "sblimp/b2": UtteranceScore(5, 40, -100.0, -2.5),
        "sblimp/g3": UtteranceScore(6, 48, -96.0, -2.0), "sblimp/b3": UtteranceScore(6, 48, -96.0, -2.0),
    }
    groups = [{"type": "a", "subtype": "a1"}, {"type": "a", "subtype": "a2"}, {"type": "b", "subtype": "b1"}]
    pairs = [Pair(utt(f"g{i}"), utt(f"b{i}"), group) for i, group in enumerate(groups, start=1)]
    benchmark = BenchmarkSet("sblimp", Path("syntactic/dev"), None, pairs, total_pairs=3)
    story = BenchmarkSet("tstory", Path("tstory"), None, [Pair(Utterance("tstory", "c", Path("c")),
                                                                Utterance("tstory", "i", Path("i")))], 1)
    scores |= {"tstory/c": UtteranceScore(4, 32, -50.0, -1.5), "tstory/i": UtteranceScore(4, 32, -60.0, -1.8)}
    return PaperMetricsResult([benchmark, story], scores, normalization), pairs


def test_accuracies_follow_from_the_scores():
    result, _ = make_result("mean")
    data = result.to_dict()
    # mean: pair 1 won (-2.5 > -3.0), pair 2 lost, pair 3 tied; sum: pair 1 lost, pair 2 lost, pair 3 tied
    assert data["sblimp_accuracy_mean"] == pytest.approx(1.5 / 3)
    assert data["sblimp_accuracy_sum"] == pytest.approx(0.5 / 3)
    assert data["sblimp_accuracy"] == data["sblimp_accuracy_mean"] and data["sblimp_correct"] == 1.5
    assert data["sblimp_samples"] == 3 and data["tstory_accuracy"] == 1.0
    assert data["paper_metrics_avg"] == pytest.approx((0.5 + 1.0) / 2)
    by_type = data["sblimp_per_type"]
    assert by_type["a"]["accuracy"] == 0.5 and by_type["a"]["samples"] == 2
    assert by_type["a"]["subtypes"]["a1"]["accuracy"] == 1.0 and by_type["b"]["accuracy"] == 0.5
    assert [p["outcome"] for p in data["benchmarks"]["sblimp"]["pairs"]] == [1.0, 0.0, 0.5]
    assert len(data["utterances"]) == 8
    summed = make_result("sum")[0].to_dict()
    assert summed["sblimp_accuracy"] == summed["sblimp_accuracy_sum"] == pytest.approx(0.5 / 3)
    assert summed["sblimp_correct"] == 0.5

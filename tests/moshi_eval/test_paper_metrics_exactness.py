"""Acceptance 1: on the four espeak-ng sets, every utterance's `sum_logprob` equals one parallel `LMModel.forward` over
the same codes (text and other stream zero, or silence, or the utterance in the user stream) to 1e-4 relative, and every
reported accuracy follows exactly from the utterance scores."""

from __future__ import annotations

import numpy as np
import pytest
from paper_metrics_helpers import (
    DATA,
    FOLDERS,
    codes_cache_dir,
    demo_mimi,
    encoder_for,
    forward_logprobs,
    set_dirs,
    small_lm,
    utterance_codes,
    zeros_like,
)

from moshi_eval.paper_metrics import evaluate_paper_metrics
from moshi_eval.paper_metrics.scores import pair_outcome

WEIGHTS = [100.0, 1, 1, 1, 1, 1, 1, 1]


lm = pytest.fixture(small_lm, scope="module", name="lm")
cache_dir = pytest.fixture(codes_cache_dir, scope="module", name="cache_dir")


def run(lm, cache_dir, **settings):
    common = set_dirs() | {"cache_dir": str(cache_dir), "batch_size": 5, "chunk_size": 16}
    return evaluate_paper_metrics(lm, demo_mimi(), common | settings, progress=False)


def reference(lm, cache_dir, data, stream: str, other: str, weights=None) -> dict[str, tuple[float, float, int]]:
    """(sum, mean, tokens) of every utterance from a parallel forward over its codes."""
    encoder = encoder_for(demo_mimi(), cache_dir)
    expected = {}
    for entry in data["utterances"]:
        codes = utterance_codes(encoder, DATA / FOLDERS[entry["benchmark"]] / entry["file"])
        filler = zeros_like(codes, lm) if other == "zero" else encoder.encode_silence(codes.shape[1])
        own, user = (codes, filler) if stream == "own" else (filler, codes)
        logprobs = forward_logprobs(lm, own, user, codes)
        w = np.ones(8) if weights is None else np.asarray(weights)
        defined = np.isfinite(logprobs)
        total = float((np.where(defined, logprobs, 0) * w).sum())
        expected[(entry["benchmark"], entry["file"])] = (total, total / float((defined * w).sum()), int(defined.sum()))
    return expected


def check_utterances(data, expected, count: int = 36) -> None:
    assert len(data["utterances"]) == len(expected) == count
    for entry in data["utterances"]:
        total, mean, tokens = expected[(entry["benchmark"], entry["file"])]
        assert entry["tokens"] == tokens == 8 * entry["frames"] - 7
        assert entry["sum_logprob"] == pytest.approx(total, rel=1e-4)
        assert entry["mean_logprob"] == pytest.approx(mean, rel=1e-4)


def check_accuracies(data) -> None:
    """Recompute every accuracy from the reported utterance scores and pairs."""
    scores = {(u["benchmark"], u["file"]): u for u in data["utterances"]}
    normalization = data["settings"]["normalization"]
    accuracies = []
    for bench, info in data["benchmarks"].items():
        won = {}
        for key in ("sum", "mean"):
            won[key] = sum(pair_outcome(scores[bench, p["good"]][f"{key}_logprob"],
                                        scores[bench, p["bad"]][f"{key}_logprob"]) for p in info["pairs"])
            assert data[f"{bench}_accuracy_{key}"] == won[key] / len(info["pairs"])
        assert data[f"{bench}_accuracy"] == data[f"{bench}_accuracy_{normalization}"]
        assert data[f"{bench}_correct"] == won[normalization]
        assert data[f"{bench}_samples"] == len(info["pairs"]) == info["total_pairs"]
        assert [p["outcome"] for p in info["pairs"]] == [
            pair_outcome(scores[bench, p["good"]][f"{normalization}_logprob"],
                         scores[bench, p["bad"]][f"{normalization}_logprob"]) for p in info["pairs"]]
        accuracies.append(data[f"{bench}_accuracy"])
    assert data["paper_metrics_avg"] == pytest.approx(sum(accuracies) / 4, abs=1e-15)
    sblimp = data["benchmarks"]["sblimp"]["pairs"]
    for type_name, entry in data["sblimp_per_type"].items():
        members = [p for p in sblimp if p["type"] == type_name]
        assert entry["samples"] == len(members)
        assert entry["correct"] == sum(p["outcome"] for p in members)


def test_own_stream_zero_text_zero_other_equals_forward(lm, cache_dir):
    data = run(lm, cache_dir)
    assert data["settings"] | {"max_pairs": None} == {
        "stream": "own", "other_stream": "zero", "text_policy": "zero", "codebook_weights": None,
        "normalization": "mean", "seed": 0, "max_pairs": None, "mode": "chunked", "chunk_size": 16, "batch_size": 5,
        "context": None, "rope_max_period": None}
    assert [data[f"{b}_samples"] for b in ("swuggy", "sblimp", "sstory", "tstory")] == [8, 6, 3, 2]
    check_utterances(data, reference(lm, cache_dir, data, "own", "zero"))
    check_accuracies(data)
    assert data["timing"]["scorer_calls"] < len(data["utterances"])


def test_user_stream_and_silence_equal_forward(lm, cache_dir):
    data = run(lm, cache_dir, stream="user")
    check_utterances(data, reference(lm, cache_dir, data, "user", "zero"))
    check_accuracies(data)
    data = run(lm, cache_dir, other_stream="silence")
    check_utterances(data, reference(lm, cache_dir, data, "own", "silence"))
    check_accuracies(data)


def test_weights_and_sum_normalization(lm, cache_dir):
    data = run(lm, cache_dir, codebook_weights=WEIGHTS, normalization="sum")
    assert data["settings"]["codebook_weights"] == WEIGHTS
    check_utterances(data, reference(lm, cache_dir, data, "own", "zero", WEIGHTS))
    check_accuracies(data)


def test_step_mode_and_batch_size_give_the_same_scores(lm, cache_dir):
    chunked = run(lm, cache_dir)
    for settings in ({"mode": "step", "batch_size": 3}, {"batch_size": 1, "chunk_size": 1024}):
        other = run(lm, cache_dir, **settings)
        for a, b in zip(chunked["utterances"], other["utterances"]):
            assert (a["file"], a["tokens"]) == (b["file"], b["tokens"])
            assert a["sum_logprob"] == pytest.approx(b["sum_logprob"], rel=1e-5)


def test_ttt_model_equals_its_parallel_forward(cache_dir):
    """The demo LM has TTT layers in every layer: streaming slots and refills stay exact there too."""
    from moshi_eval.librilight.demo import build_demo_lm

    ttt_lm = build_demo_lm()
    data = run(ttt_lm, cache_dir, sblimp_dir=None, swuggy_dir=None, tstory_dir=None, batch_size=4, chunk_size=32)
    check_utterances(data, reference(ttt_lm, cache_dir, data, "own", "zero"), count=6)

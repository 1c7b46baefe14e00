"""Acceptance 2: window losses, slope and curves equal a plain numpy reference, with unequal lengths, undefined
codebooks at the ends, codebook weights and positions no sequence reaches."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from moshi.utils.files import write_json_atomic
from moshi_eval.librilight.config import position_key
from moshi_eval.librilight.results import LibriLightResult
from moshi_eval.scoring.run import SequenceLosses

DEP_Q = 4
DELAYS = [0, 1, 1, 2]


def synthetic_sequences(lengths: list[int], seed: int = 0) -> list[SequenceLosses]:
    rng = np.random.default_rng(seed)
    sequences = []
    for index, length in enumerate(lengths):
        trend = 3.0 - 0.0004 * np.arange(length)[:, None]
        losses = (trend + 0.3 * rng.standard_normal((length, DEP_Q))).astype(np.float32)
        for codebook, delay in enumerate(DELAYS):
            if delay:
                losses[length - delay:, codebook] = np.nan
        sequences.append(SequenceLosses(f"s{index}", losses, [f"s{index}.flac"]))
    return sequences


def reference_frame_loss(row: np.ndarray, weights: list[float]) -> float:
    total, weight_sum = 0.0, 0.0
    for value, weight in zip(row, weights):
        if not math.isnan(value):
            total += weight * float(value)
            weight_sum += weight
    return total / weight_sum


def reference_metrics(sequences: list[SequenceLosses], positions: list[int], window: int, weights: list[float]):
    per_frame = [np.array([reference_frame_loss(row, weights) for row in s.codebook_losses]) for s in sequences]
    windows = {}
    for position in positions:
        means = [f[position - window: position].mean() for f in per_frame if len(f) >= position]
        windows[position] = float(np.mean(means)) if means else None
    longest = max(len(f) for f in per_frame)
    curve = np.array([np.mean([f[i] for f in per_frame if len(f) > i]) for i in range(longest)])
    slope = np.polyfit(np.arange(longest), curve, 1)[0]
    return windows, float(slope), curve, sum(len(f) for f in per_frame)


@pytest.mark.parametrize("weights", [None, [100.0, 1.0, 1.0, 1.0]])
def test_windows_and_slope_match_numpy_reference(weights):
    sequences = synthetic_sequences([2600, 1900, 3100, 800])
    positions = [1000, 2000, 2500, 3000, 3500]
    window = 300
    result = LibriLightResult(sequences, card=2048, frame_rate=12.5, positions=positions, window=window,
                              bin_size=100, codebook_weights=weights)
    data = result.to_dict()
    windows, slope, curve, samples = reference_metrics(sequences, positions, window, weights or [1.0] * DEP_Q)
    for position in positions:
        got = data[f"librilight_loss_{position_key(position)}"]
        if windows[position] is None:
            assert got is None
            assert data["windows"][position_key(position)]["num_sequences"] == 0
        else:
            assert got == pytest.approx(windows[position], abs=1e-9)
    assert data["librilight_loss_3500"] is None
    assert data["windows"]["2500"]["num_sequences"] == 2
    assert data["librilight_slope"] == pytest.approx(slope, rel=1e-9, abs=1e-12)
    assert data["librilight_samples"] == samples
    bins = [curve[i: i + 100].mean() for i in range(0, len(curve), 100)]
    np.testing.assert_allclose(data["curve"]["loss"], bins, rtol=0, atol=1e-9)


def test_per_codebook_windows_and_summaries():
    sequences = synthetic_sequences([1200, 1500])
    result = LibriLightResult(sequences, card=2048, frame_rate=12.5, positions=[1000, 1500], window=200)
    data = result.to_dict()
    for codebook in range(DEP_Q):
        expected = np.mean([np.nanmean(s.codebook_losses[800:1000, codebook].astype(np.float64)) for s in sequences])
        assert data["windows"]["1k"]["codebooks"][codebook] == pytest.approx(expected, abs=1e-9)
    summary = data["sequences"][0]
    assert summary["id"] == "s0" and summary["num_frames"] == 1200
    assert summary["window_losses"].keys() == {"1k"}
    assert summary["minutes"] == pytest.approx(1200 / 12.5 / 60)


def test_key_naming_and_uniform_flag(tmp_path):
    assert position_key(8000) == "8k" and position_key(24000) == "24k" and position_key(1500) == "1500"
    bad = [SequenceLosses("bad", np.full((300, DEP_Q), 9.0, dtype=np.float32))]
    data = LibriLightResult(bad, card=2048, frame_rate=12.5, positions=[200], window=100).to_dict()
    assert data["librilight_loss_200"] == pytest.approx(9.0)
    assert len(data["flags"]) == 1 and "ln(card)" in data["flags"][0]
    write_json_atomic(tmp_path / "r.json", data)
    assert json.loads((tmp_path / "r.json").read_text()) == data
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_no_sequence_gives_nulls():
    data = LibriLightResult([], card=2048, frame_rate=12.5, positions=[8000], window=1000).to_dict()
    assert data["librilight_loss_8k"] is None and data["librilight_slope"] is None
    assert data["librilight_samples"] == 0

"""Acceptance 3: the keys our users' dashboards and loggers read -- perplexities, the progression every 1000 frames,
integer-suffixed legacy keys and `flat_metrics()` -- equal the windows they derive from."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_metrics import DEP_Q, reference_metrics, synthetic_sequences

from moshi_eval.librilight.results import PROGRESSION_STEP, LibriLightResult
from moshi_eval.scoring.run import SequenceLosses

LENGTHS = [2600, 1900, 3100, 800]
POSITIONS = [1000, 2000, 2500, 3500]
WINDOW = 300


@pytest.fixture(scope="module")
def sequences():
    return synthetic_sequences(LENGTHS)


def result(sequences, **fields) -> LibriLightResult:
    return LibriLightResult(sequences, card=2048, frame_rate=12.5, positions=POSITIONS, window=WINDOW, **fields)


def reference_windows(sequences, positions):
    return reference_metrics(sequences, positions, WINDOW, [1.0] * DEP_Q)[0]


def test_perplexity_is_exp_of_each_window_loss(sequences):
    data = result(sequences).to_dict()
    windows = reference_windows(sequences, POSITIONS)
    for position, key in zip(POSITIONS, ("1k", "2k", "2500", "3500")):
        if windows[position] is None:
            assert data[f"librilight_perplexity_{key}"] is None
        else:
            assert data[f"librilight_perplexity_{key}"] == pytest.approx(math.exp(windows[position]), rel=1e-12)


def test_progression_every_1000_frames_equals_those_windows(sequences):
    data = result(sequences).to_dict()
    positions = list(range(PROGRESSION_STEP, max(LENGTHS) + 1, PROGRESSION_STEP))
    windows = reference_windows(sequences, positions)
    assert [point["position"] for point in data["librilight_progression"]] == positions == [1000, 2000, 3000]
    for point in data["librilight_progression"]:
        assert set(point) == {"position", "loss", "perplexity"}
        assert point["loss"] == pytest.approx(windows[point["position"]], abs=1e-9)
        assert point["perplexity"] == pytest.approx(math.exp(point["loss"]), rel=1e-12)
    assert data["librilight_progression"][0]["loss"] == data["librilight_loss_1k"]


def test_legacy_keys_use_integer_suffixes(sequences):
    plain = result(sequences).to_dict()
    legacy = result(sequences, legacy_keys=True).to_dict()
    assert not any(key.split("_")[-1].isdigit() and int(key.split("_")[-1]) % 1000 == 0 for key in plain)
    windows = reference_windows(sequences, [1000, 2000, 3000])
    for position in (1000, 2000, 3000):
        assert legacy[f"librilight_loss_{position}"] == pytest.approx(windows[position], abs=1e-9)
    assert legacy["librilight_loss_2000"] == legacy["librilight_loss_2k"]
    assert legacy["librilight_loss_3500"] is None and legacy["librilight_loss_2500"] == plain["librilight_loss_2500"]
    assert {key: value for key, value in legacy.items() if key in plain} == plain


def test_flat_metrics_are_only_finite_numbers(sequences):
    res = result(sequences, legacy_keys=True)
    flat = res.flat_metrics()
    data = res.to_dict()
    assert all(type(value) in (int, float) and math.isfinite(value) for value in flat.values())
    assert flat["librilight_loss_2k"] == data["librilight_loss_2k"]
    assert flat["librilight_perplexity_2k"] == data["librilight_perplexity_2k"]
    assert flat["librilight_loss_3000"] == data["librilight_loss_3000"]
    assert flat["librilight_samples"] == data["librilight_samples"] and flat["librilight_slope"] == data[
        "librilight_slope"]
    assert "librilight_loss_3500" not in flat and "librilight_progression" not in flat
    expected = {key for key, value in data.items() if key.startswith("librilight_")
                and isinstance(value, int | float) and value is not None}
    assert set(flat) == expected
    empty = LibriLightResult([], card=2048, frame_rate=12.5).flat_metrics()
    assert empty == {"librilight_samples": 0}


def test_overflowing_perplexity_is_not_a_number_in_the_results():
    huge = [SequenceLosses("huge", np.full((1200, DEP_Q), 800.0, dtype=np.float32))]
    res = LibriLightResult(huge, card=2048, frame_rate=12.5, positions=[1000], window=1000)
    assert res.to_dict()["librilight_perplexity_1k"] is None
    assert "librilight_perplexity_1k" not in res.flat_metrics() and res.flat_metrics()["librilight_loss_1k"] == 800.0

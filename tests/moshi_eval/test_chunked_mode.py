"""`--mode chunked`: chunked scoring gives the per-step results (pad and greedy), on the fixtures and on a TTT model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from librilight_helpers import random_codes, write_codes
from ttt_lm import small_ttt_lm

from moshi_eval.librilight import evaluate_librilight
from moshi_eval.librilight.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")


def _per_frame(result) -> dict[str, np.ndarray]:
    return {s.sequence_id: s.codebook_losses for s in result.sequences}


def _assert_same(chunked, stepped) -> None:
    assert chunked.keys() == stepped.keys()
    for key in stepped:
        np.testing.assert_allclose(chunked[key], stepped[key], atol=1e-4, rtol=0, equal_nan=True)


@pytest.mark.parametrize("policy", ["pad", "greedy"])
def test_chunked_equals_step_on_fixtures(lm_case, tmp_path, policy):
    io = lm_case.io
    write_codes(tmp_path, "long", torch.cat([io["own_audio"][0], io["user_audio"][0].clamp(min=0)]))
    write_codes(tmp_path, "short", torch.cat([io["own_audio"][1, :, :13], io["user_audio"][1, :, :13].clamp(min=0)]))
    lm = lm_case.model()
    common = {"codes": [str(tmp_path)], "user_stream": "zero", "text_policy": policy, "batch_size": 2,
              "positions": [10], "window": 5, "progress": False}
    stepped = _per_frame(evaluate_librilight(lm, None, **common))
    for chunk in (1, 7, 64):
        result = evaluate_librilight(lm, None, mode="chunked", chunk_size=chunk, **common)
        _assert_same(_per_frame(result), stepped)
        timing = result.to_dict()["timing"]
        rate = timing["speculation_acceptance_rate"]
        assert 0 < rate <= 1 and (policy == "greedy" or rate == 1)
        assert timing["main_steps_per_frame"] == pytest.approx(1 / rate)


def test_chunked_equals_step_with_ttt_across_mini_batches(tmp_path):
    lm = small_ttt_lm()
    generator = torch.Generator().manual_seed(2)
    for name, frames in (("a", 70), ("b", 41)):
        write_codes(tmp_path, name, random_codes(generator, 3, frames, 32))
    common = {"codes": [str(tmp_path)], "user_stream": "zero", "batch_size": 2, "positions": [40], "window": 20,
              "progress": False}
    for policy in ("pad", "greedy"):
        stepped = _per_frame(evaluate_librilight(lm, None, text_policy=policy, **common))
        for chunk in (7, 64):
            chunked = evaluate_librilight(lm, None, text_policy=policy, mode="chunked", chunk_size=chunk, **common)
            _assert_same(_per_frame(chunked), stepped)


def test_chunked_mode_refuses_sampling():
    from moshi_eval.librilight.config import LibriLightConfig

    with pytest.raises(ValueError, match="chunked"):
        LibriLightConfig(mode="chunked", text_policy="sample")
    with pytest.raises(ValueError, match="chunk_size"):
        LibriLightConfig(mode="chunked", chunk_size=0)


def test_cli_accepts_mode_flags(tmp_path, capsys):
    code = main(["--mode", "chunked", "--chunk-size", "0", "--codes", str(tmp_path)])
    assert code == 2
    assert "chunk_size" in capsys.readouterr().err

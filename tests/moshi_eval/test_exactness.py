"""Acceptance 1: on both LM parity fixtures, the pre-encoded codes path gives the exact teacher-forced losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from librilight_helpers import write_codes
from torch.nn import functional as F

from moshi_eval.librilight import evaluate_librilight
from moshi_eval.scoring.errors import WorseThanUniformWarning

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")


def reference_losses(lm_case) -> tuple[np.ndarray, np.ndarray]:
    """Cross-entropy `[B, T, dep_q]` of the fixture's teacher-forced forward logits, and where it is defined."""
    io = lm_case.io
    logits = io["teacher_forced.logits"].nan_to_num()
    ce = F.cross_entropy(logits.permute(0, 3, 1, 2), io["own_audio"], reduction="none")
    return ce.permute(0, 2, 1).numpy(), io["teacher_forced.mask"].permute(0, 2, 1).numpy()


def test_codes_path_matches_teacher_forced_forward(lm_case, tmp_path):
    io = lm_case.io
    silent = bool((io["user_audio"] == -1).all())
    for b in range(lm_case.batch_size):
        codes = io["own_audio"][b] if silent else torch.cat([io["own_audio"][b], io["user_audio"][b]])
        write_codes(tmp_path, f"item{b}", codes)
    result = evaluate_librilight(lm_case.model(), None, codes=[str(tmp_path)], user_stream="zero",
                                 text_policy="greedy", batch_size=2, positions=[10], window=5, progress=False)
    expected, defined = reference_losses(lm_case)
    assert [s.sequence_id for s in result.sequences] == [f"item{b}" for b in range(lm_case.batch_size)]
    for b, sequence in enumerate(result.sequences):
        got = sequence.codebook_losses
        assert got.dtype == np.float32 and got.shape == expected[b].shape
        np.testing.assert_allclose(got[defined[b]], expected[b][defined[b]], atol=1e-4, rtol=0)
        assert np.isnan(got[~defined[b]]).all()
        per_frame = sequence.frame_losses()
        masked_mean = np.where(defined[b], expected[b], 0).sum(1) / defined[b].sum(1)
        np.testing.assert_allclose(per_frame, masked_mean, atol=1e-4, rtol=0)
    scored = np.concatenate([s.codebook_losses[np.isfinite(s.codebook_losses)] for s in result.sequences])
    assert scored.size == lm_case.io["teacher_forced.ce_per_token"].numel()
    assert abs(float(scored.astype(np.float64).mean()) - lm_case.meta["teacher_forced.ce_mean"]) <= 1e-5


def test_worse_than_uniform_windows_are_flagged_and_warned(lm_case, tmp_path):
    write_codes(tmp_path, "item", lm_case.io["own_audio"][0])
    with pytest.warns(WorseThanUniformWarning) as record:
        result = evaluate_librilight(lm_case.model(), None, codes=[str(tmp_path)], user_stream="zero",
                                     positions=[8, 16], window=8, progress=False)
    data = result.to_dict()
    limit = np.log(lm_case.config["card"])
    flagged = [key for key in ("librilight_loss_8", "librilight_loss_16") if data[key] > limit]
    assert flagged and len(data["flags"]) == len(flagged) == len(record)
    assert all(key in flag for key, flag in zip(flagged, data["flags"]))

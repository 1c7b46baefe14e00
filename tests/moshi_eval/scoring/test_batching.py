"""Acceptance 3 and scoring behaviour: batch invariance (with slot refills), the `pad` policy against a parallel
forward, seeded sampling, and the non-finite loss error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from librilight_helpers import random_codes, write_codes
from lm_fixtures import load_case
from safetensors.torch import load_file
from torch.nn import functional as F

from moshi_eval.librilight import NonFiniteLossError, evaluate_librilight

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")

LENGTHS = (23, 41, 57)


@pytest.fixture(scope="module")
def case(parity_dir):
    return load_case(parity_dir, "lm_moshiko_tiny")


@pytest.fixture(scope="module")
def codes_dir(case, tmp_path_factory):
    """Three sequences longer than the attention context: two with a user stream given, one own-audio only."""
    folder = tmp_path_factory.mktemp("codes")
    generator = torch.Generator().manual_seed(7)
    card = case.config["card"]
    for index, length in enumerate(LENGTHS):
        codebooks = 8 if index == 1 else 16
        write_codes(folder, f"seq{index}", random_codes(generator, codebooks, length, card))
    return folder


def run(case, codes_dir, **settings):
    defaults = {"codes": [str(codes_dir)], "user_stream": "zero", "positions": [20], "window": 10,
                "progress": False}
    return evaluate_librilight(case.model(), None, **(defaults | settings))


@pytest.mark.parametrize("policy", ["greedy", "pad"])
def test_batch_size_does_not_change_losses(case, codes_dir, policy):
    single = run(case, codes_dir, batch_size=1, text_policy=policy)
    for batch_size in (2, 3):
        batched = run(case, codes_dir, batch_size=batch_size, text_policy=policy)
        assert [s.sequence_id for s in batched.sequences] == ["seq0", "seq1", "seq2"]
        for one, many in zip(single.sequences, batched.sequences):
            assert one.num_frames == many.num_frames
            np.testing.assert_allclose(many.codebook_losses, one.codebook_losses, atol=1e-5, rtol=0)


def test_pad_policy_equals_parallel_forward(case, codes_dir):
    result = run(case, codes_dir, batch_size=3, text_policy="pad")
    lm = case.model()
    for index, sequence in enumerate(result.sequences):
        stored = load_file(str(codes_dir / f"seq{index}.safetensors"))["codes"]
        own = stored[:8]
        user = stored[8:] if stored.shape[0] == 16 else torch.full_like(own, lm.zero_token_id)
        text = torch.full((1, own.shape[1]), lm.text_padding_token_id, dtype=torch.long)
        with torch.no_grad():
            out = lm.forward(torch.cat([text, own, user])[None])
        ce = F.cross_entropy(out.logits.nan_to_num().permute(0, 3, 1, 2), own[None], reduction="none")[0].T
        mask = out.mask[0].T.numpy()
        np.testing.assert_allclose(sequence.codebook_losses[mask], ce.numpy()[mask], atol=1e-4, rtol=0)
        assert np.isnan(sequence.codebook_losses[~mask]).all()


def test_sample_policy_is_reproducible_with_its_seed(case, codes_dir):
    first = run(case, codes_dir, batch_size=3, text_policy="sample", seed=3)
    again = run(case, codes_dir, batch_size=3, text_policy="sample", seed=3)
    for a, b in zip(first.sequences, again.sequences):
        np.testing.assert_array_equal(a.codebook_losses, b.codebook_losses)


def test_non_finite_loss_names_sequence_and_frame(case, tmp_path):
    lm = case.model()
    poisoned = lm.card - 1
    with torch.no_grad():
        lm.emb[0].weight[poisoned] = float("nan")
    generator = torch.Generator().manual_seed(1)
    own = random_codes(generator, 8, 20, lm.card - 1)
    own[0, 5] = poisoned
    write_codes(tmp_path, "poisoned", own)
    with pytest.raises(NonFiniteLossError) as error:
        evaluate_librilight(lm, None, codes=[str(tmp_path)], user_stream="zero", positions=[10], window=5,
                            progress=False)
    assert error.value.sequence_id == "poisoned"
    assert (error.value.frame, error.value.codebook) == (5, 1)
    assert "poisoned" in str(error.value) and "frame 5" in str(error.value)


def poisoned_model_and_codes(case, tmp_path, frames: int, bad_frame: int):
    lm = case.model()
    poisoned = lm.card - 1
    with torch.no_grad():
        lm.emb[0].weight[poisoned] = float("nan")
    own = random_codes(torch.Generator().manual_seed(2), 8, frames, lm.card - 1)
    own[0, bad_frame] = poisoned
    write_codes(tmp_path, "long", own)
    return lm


@pytest.mark.parametrize(("mode", "check_every", "chunk_size"), [("step", 16, 1024), ("chunked", 250, 16)])
def test_non_finite_loss_stops_the_run_early(case, tmp_path, monkeypatch, mode, check_every, chunk_size):
    """A NaN at frame 3 of 400 stops the run after `check_every` steps (per step) or at the end of its chunk."""
    from moshi.models.lm import LMGen

    lm = poisoned_model_and_codes(case, tmp_path, frames=400, bad_frame=3)
    calls = []
    for name in ("step_with_logits", "step_chunk_with_logits"):
        original = getattr(LMGen, name)
        monkeypatch.setattr(LMGen, name, lambda self, *a, _original=original, **k: calls.append(1) or _original(
            self, *a, **k))
    with pytest.raises(NonFiniteLossError) as error:
        evaluate_librilight(lm, None, codes=[str(tmp_path)], user_stream="zero", positions=[10], window=5,
                            mode=mode, check_every=check_every, chunk_size=chunk_size, text_policy="pad",
                            progress=False)
    assert error.value.sequence_id == "long"
    if mode == "step":
        assert (error.value.frame, error.value.codebook) == (3, 1) and len(calls) == check_every
    else:  # a parallel pass spreads the NaN over its chunk (masked attention weights times NaN values)
        assert error.value.frame < chunk_size and len(calls) == 1

"""The moshi-finetune TTT fork's checkpoints compute what their training computed, and their causal form streams.

Each `user_ttt` case holds logits computed by the users' own code on their own checkpoint files (see
`tests/user_ttt_fixtures.py`). `TTTConfig.from_moshi_finetune` on the case's YAML section must reproduce them with our
parallel forward; the causal form (`minibatch_causal=True`) must stream exactly against its own parallel forward.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch
from user_ttt_fixtures import (
    ADAPTER_ONLY_CASES,
    CONSOLIDATED_CASES,
    load_user_case,
    max_logit_difference,
    streamed_logits,
)

from moshi.models import loaders
from moshi.modules.ttt import CAUSAL_STREAMING_NOTE, TTTBlock

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=CONSOLIDATED_CASES + ADAPTER_ONLY_CASES)
def user_case(request, parity_dir):
    return load_user_case(parity_dir, request.param)


def test_parallel_forward_matches_their_training_code(user_case):
    lm = user_case.model(user_case.ttt_config())
    with torch.no_grad():
        output = lm(user_case.io["codes"])
    assert max_logit_difference(output, user_case.io) <= TOLERANCE
    with torch.no_grad():
        again = lm(user_case.io["codes"])
    assert torch.equal(again.logits.nan_to_num(), output.logits.nan_to_num()), "a second forward must not differ"


@pytest.mark.parametrize("name", CONSOLIDATED_CASES)
def test_adapter_only_file_over_the_base_weights(parity_dir, name):
    """The consolidated cases also hold their adapter-only file (the other cases hold nothing else, and the
    parallel-forward test loads them that way)."""
    user_case = load_user_case(parity_dir, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = loaders.get_moshi_lm(user_case.base_weights, user_case.config | {"ttt": user_case.ttt_config()},
                                  dtype=torch.float32, ttt_weights=user_case.adapters)
    with torch.no_grad():
        assert max_logit_difference(lm(user_case.io["codes"]), user_case.io) <= TOLERANCE


@pytest.mark.parametrize("chunk", [None, 1, 2, 5])
def test_causal_form_streams_exactly(user_case, chunk):
    """`step_with_logits` (chunk None) and chunked scoring, teacher-forced, equal the parallel causal forward."""
    lm = user_case.model(user_case.ttt_config(minibatch_causal=True))
    codes = user_case.io["codes"]
    with torch.no_grad():
        reference = lm(codes)
    audio_logits, text_logits = streamed_logits(lm, codes, chunk)
    mask = reference.mask
    assert mask.sum() > 0
    torch.testing.assert_close(audio_logits[mask], reference.logits[mask], atol=TOLERANCE, rtol=0)
    text_mask = reference.text_mask
    torch.testing.assert_close(text_logits[text_mask], reference.text_logits[text_mask], atol=TOLERANCE, rtol=0)


def test_the_causal_form_is_a_different_function(user_case):
    """The training function reads later frames of its mini-batch; the causal form cannot, so they differ."""
    lm = user_case.model(user_case.ttt_config(minibatch_causal=True))
    with torch.no_grad():
        assert max_logit_difference(lm(user_case.io["codes"]), user_case.io) > 100 * TOLERANCE


def test_streaming_a_non_causal_config_warns_once_and_streams_the_causal_form(parity_dir):
    case = load_user_case(parity_dir, "mlp2_rope")
    trained = case.model(case.ttt_config())
    causal = case.model(case.ttt_config(minibatch_causal=True))
    codes = case.io["codes"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        audio_logits, _ = streamed_logits(trained, codes, chunk=None)
    notes = [w for w in caught if str(w.message) == CAUSAL_STREAMING_NOTE]
    assert len(notes) == 1 and issubclass(notes[0].category, UserWarning)
    assert CAUSAL_STREAMING_NOTE.count(". ") == 0
    with torch.no_grad():
        reference = causal(codes)
    torch.testing.assert_close(audio_logits[reference.mask], reference.logits[reference.mask], atol=TOLERANCE, rtol=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        streamed_logits(causal, codes, chunk=3)
    assert not [w for w in caught if str(w.message) == CAUSAL_STREAMING_NOTE]


def test_checkpoint_info_reads_their_section_from_config_json(parity_dir, tmp_path):
    case = load_user_case(parity_dir, "mlp3")
    config = dict(case.config, ttt=case.section, moshi_name=str(case.consolidated), mimi_name="mimi.safetensors",
                  tokenizer_name="tokenizer.model")
    (tmp_path / "config.json").write_text(json.dumps(config))
    info = loaders.CheckpointInfo.from_hf_repo(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm = info.get_moshi(dtype=torch.float32)
    notes = [str(w.message) for w in caught]
    assert any("ignored key(s)" in note and "persistent_states" in note for note in notes)
    assert any("backward_ssm_gating" in note for note in notes)
    assert not lm.ttt_config.minibatch_causal and lm.ttt_config.query_update_count == 2
    with torch.no_grad():
        assert max_logit_difference(lm(case.io["codes"]), case.io) <= TOLERANCE


# Each field of `from_moshi_finetune` that departs from the reference, set back to the reference value: the logits
# must move (none of them is dead), on a case where the field applies, by more than a bound well below what
# `bench/ttt_user_differences.py` measures (the gate clamp touches two gate entries; the inner LayerNorm eps moves the
# logits by a few 1e-5 only, still far above the 6e-7 of the exact config).
REFERENCE_VALUES = {
    "output_projection": ("mlp2", {"output_projection": True}, 0.1),
    "qk_l2_norm": ("mlp2", {"qk_l2_norm": False}, 0.1),
    "minibatch_causal": ("mlp2", {"minibatch_causal": True}, 0.05),
    "pad_to_minibatch": ("mlp2", {"pad_to_minibatch": False}, 0.02),
    "inner_step_divisor": ("mlp2", {"minibatch_causal": True, "inner_step_divisor": "position"}, 0.05),
    "target_norm": ("mlp2", {"target_norm": False}, 0.05),
    "ln_eps": ("mlp3", {"ln_eps": 1e-6}, 1e-5),
    "gate_clamp": ("mlp3", {"gate_clamp": None}, 5e-4),
    "rope": ("mlp2_rope", {"rope": False}, 0.1),
    "query_update_count": ("mlp3", {"query_update_count": 1}, 0.05),
    "other_layer_context": ("b2_c4_mlp3_contexts", {"other_layer_context": None}, 0.02),
    "ttt_layer_context": ("b2_c4_mlp3_contexts", {"ttt_layer_context": None}, 0.02),
}


@pytest.mark.parametrize("field", sorted(REFERENCE_VALUES))
def test_every_difference_changes_the_logits(parity_dir, field):
    name, changes, bound = REFERENCE_VALUES[field]
    case = load_user_case(parity_dir, name)
    lm = case.model(case.ttt_config(**changes))
    with torch.no_grad():
        assert max_logit_difference(lm(case.io["codes"]), case.io) > bound


def test_blocks_follow_their_section(parity_dir):
    case = load_user_case(parity_dir, "mlp3")
    lm = case.model(case.ttt_config())
    blocks = [layer.ttt for layer in lm.transformer.layers]
    assert all(isinstance(block, TTTBlock) for block in blocks)
    layer = blocks[0].ttt_layer
    assert layer.inner_dims == [8, 16, 16, 8] and layer.mini_batch_size == 3
    assert dataclasses.replace(case.ttt_config()) == lm.ttt_config

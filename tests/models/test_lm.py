"""LMModel and LMGen against upstream moshi 0.2.13 outputs (parity fixtures), plus input validation."""

from __future__ import annotations

import copy

import pytest
import torch
from lm_fixtures import load_case, user_input
from safetensors.torch import load_file

from moshi.models.lm import LMGen, LMModel


def _codes(io: dict[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
    return torch.cat([text, io["own_audio"], io["user_audio"]], dim=1)


def test_forward_matches_upstream(lm_case):
    lm = lm_case.model()
    with torch.no_grad():
        out = lm(_codes(lm_case.io, lm_case.io["text_given"]))
    mask, text_mask = lm_case.io["forward_given.mask"], lm_case.io["forward_given.text_mask"]
    assert torch.equal(out.mask, mask)
    assert torch.equal(out.text_mask, text_mask)
    torch.testing.assert_close(out.logits[mask], lm_case.io["forward_given.logits"][mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        out.text_logits[text_mask], lm_case.io["forward_given.text_logits"][text_mask], atol=1e-4, rtol=0)
    assert torch.isnan(out.logits[~mask]).all()


def _greedy_tokens(lm: LMModel, user_audio: torch.Tensor, num_steps: int, **step_kwargs) -> torch.Tensor:
    """Greedy `LMGen.step` outputs `[B, dep_q + 1, num_steps]`, -2 where a step returned None."""
    lm_gen = LMGen(lm, use_sampling=False)
    B = user_audio.shape[0]
    columns = []
    with lm_gen.streaming(B):
        for step in range(num_steps):
            out = lm_gen.step(user_input(user_audio, step), **step_kwargs)
            columns.append(torch.full((B, lm.dep_q + 1, 1), -2) if out is None else out)
    return torch.cat(columns, dim=2)


def test_greedy_step_matches_upstream(lm_case):
    expected = lm_case.io["greedy_step.tokens"]
    tokens = _greedy_tokens(lm_case.model(), lm_case.io["user_audio"], expected.shape[2])
    assert torch.equal(tokens, expected)


def test_teacher_forced_step_text_matches_upstream(lm_case):
    from lm_fixtures import replace_tokens

    lm = lm_case.model()
    io = lm_case.io
    lm_gen = LMGen(lm, use_sampling=False)
    text = []
    with lm_gen.streaming(lm_case.batch_size):
        for step in range(lm_case.num_frames + lm_gen.max_delay):
            out = lm_gen.step(user_input(io["user_audio"], step), replace_tokens(io["own_audio"], lm.delays, step))
            if out is not None:
                text.append(out[:, :1])
    assert torch.equal(torch.cat(text, dim=2), io["teacher_forced.text_pred"])


def test_stacked_checkpoint_gives_identical_outputs(parity_dir):
    case = load_case(parity_dir, "lm_moshiko_tiny")
    stacked = load_file(parity_dir / "lm_moshiko_tiny" / "model_stacked.safetensors")
    assert any(k.endswith("in_proj_weight") for k in stacked)
    split_model, stacked_model = case.model(), LMModel(**case.config).eval()
    stacked_model.load_state_dict(stacked, strict=True)
    codes = _codes(case.io, case.io["text_given"])
    with torch.no_grad():
        assert torch.equal(split_model(codes).logits.nan_to_num(), stacked_model(codes).logits.nan_to_num())


def test_wrong_number_of_codebooks_is_a_clear_error(lm_case):
    lm = lm_case.model()
    codes = _codes(lm_case.io, lm_case.io["text_given"])
    with pytest.raises(ValueError, match=r"\[B, 17, T\]"):
        lm(codes[:, :-1])
    lm_gen = LMGen(lm, use_sampling=False)
    batch, user = lm_case.batch_size, lm.n_q - lm.dep_q
    expected = rf"\[B={batch}, n_q - dep_q={user}, 1\]"
    with lm_gen.streaming(batch):
        with pytest.raises(ValueError, match=expected + r".*got \[" + f"{batch}, 3, 1" + r"\]"):
            lm_gen.step(torch.zeros(batch, 3, 1, dtype=torch.long))
        with pytest.raises(ValueError, match=expected + r".*got \[" + f"{batch}, {user}" + r"\]"):
            lm_gen.step_with_logits(torch.zeros(batch, user, dtype=torch.long))


def test_tokens_outside_vocabulary_are_a_clear_error(lm_case):
    lm = lm_case.model()
    codes = _codes(lm_case.io, lm_case.io["text_given"]).clone()
    codes[0, 3, 2] = lm.card
    with pytest.raises(ValueError, match=f"token {lm.card} is outside"):
        lm(codes)
    codes = _codes(lm_case.io, lm_case.io["text_given"]).clone()
    codes[1, 0, 0] = -5
    with pytest.raises(ValueError, match="text stream: token -5"):
        lm(codes)
    lm_gen = LMGen(lm, use_sampling=False)
    user = torch.full((lm_case.batch_size, 8, 1), lm.card + 3)
    with lm_gen.streaming(lm_case.batch_size), pytest.raises(ValueError, match="user audio"):
        lm_gen.step(user)


def test_step_outside_streaming_is_a_clear_error(lm_case):
    lm_gen = LMGen(lm_case.model(), use_sampling=False)
    with pytest.raises(RuntimeError, match="not streaming"):
        lm_gen.step(torch.zeros(lm_case.batch_size, 8, 1, dtype=torch.long))


def test_lmgen_refuses_training_mode(lm_case):
    with pytest.raises(RuntimeError, match="eval"):
        LMGen(lm_case.model().train())


def test_bfloat16_forward_and_step(parity_dir):
    case = load_case(parity_dir, "lm_moshiko_tiny")
    lm = case.model(dtype=torch.bfloat16)
    assert lm.dtype == torch.bfloat16
    codes = _codes(case.io, case.io["text_given"])
    with torch.no_grad():
        out = lm(codes)
    mask = case.io["forward_given.mask"]
    assert out.logits.dtype == torch.bfloat16
    reference = case.io["forward_given.logits"][mask]
    assert (out.logits[mask].float() - reference).abs().mean() < 0.05 * reference.abs().mean()
    tokens = _greedy_tokens(lm, case.io["user_audio"], 5)
    assert tokens.shape == (case.batch_size, lm.dep_q + 1, 5)
    assert (tokens[:, :, 2:] >= 0).all()


def test_hooks_see_every_step(parity_dir):
    case = load_case(parity_dir, "lm_moshiko_tiny")
    seen = {"text_logits": [], "text": [], "audio": []}
    lm = case.model()
    lm_gen = LMGen(lm, use_sampling=False, on_text_logits_hook=seen["text_logits"].append,
                   on_text_hook=seen["text"].append, on_audio_hook=seen["audio"].append)
    with lm_gen.streaming(2):
        outputs = [lm_gen.step(user_input(case.io["user_audio"], step)) for step in range(4)]
    assert [t.shape for t in seen["text_logits"]] == [(2, 1, 1, lm.text_card)] * 4
    assert [t.shape for t in seen["text"]] == [(2,)] * 4
    assert [t.shape for t in seen["audio"]] == [(2, lm.dep_q)] * 4
    assert torch.equal(outputs[1][:, 0, 0], seen["text"][0])


def test_conditioning_and_guidance_are_refused(lm_case):
    lm = lm_case.model()
    with pytest.raises(NotImplementedError, match="guidance"):
        LMGen(lm, cfg_coef=2.0)
    with pytest.raises(NotImplementedError, match="conditioning"):
        lm.forward_text(torch.zeros(1, 17, 1, dtype=torch.long), sum_condition=torch.zeros(1))
    with pytest.raises(NotImplementedError, match="cross-attention"):
        LMModel(**lm_case.config, cross_attention=True)


def _tiny_unconditioned_lm() -> LMModel:
    torch.manual_seed(0)
    return LMModel(delays=[0, 1], n_q=1, dep_q=1, card=8, text_card=9, dim=16, num_heads=2, num_layers=1,
                   depformer_dim=8, depformer_num_heads=1, depformer_num_layers=1, context=4)


def test_forward_takes_upstreams_condition_keyword_and_refuses_conditions():
    lm = _tiny_unconditioned_lm()
    assert lm.condition_provider is None and lm.fuser is None
    codes = torch.randint(0, 8, (1, 2, 5))
    with torch.no_grad():
        torch.testing.assert_close(lm(codes=codes, condition_tensors=None).logits, lm(codes).logits, equal_nan=True)
        with pytest.raises(NotImplementedError, match="condition_tensors must be None"):
            lm(codes, condition_tensors={"description": (torch.zeros(1, 1, 16), torch.ones(1, 1))})


def test_lmgen_names_upstreams_conditioning_keywords_and_rejects_unknown_ones():
    lm = _tiny_unconditioned_lm().eval()
    LMGen(lm, condition_tensors=None, cfg_is_masked_until=None, cfg_is_no_text=False)
    given = {"condition_tensors": {"description": (torch.zeros(1, 1, 16), torch.ones(1, 1))},
             "cfg_is_masked_until": [2], "cfg_is_no_text": True}
    for keyword, value in given.items():
        with pytest.raises(NotImplementedError, match=keyword):
            LMGen(lm, **{keyword: value})
    with pytest.raises(TypeError, match="use_samplng"):
        LMGen(lm, use_samplng=False)
    with pytest.raises(TypeError, match="top_p"):
        LMGen(lm, top_p=0.0)


def test_step_with_extra_heads_gives_step_tokens_and_head_probabilities(parity_dir):
    case = load_case(parity_dir, "lm_moshiko_tiny")
    torch.manual_seed(0)
    lm = LMModel(**case.config, extra_heads_num_heads=2, extra_heads_dim=5).eval()
    plain = LMGen(copy.deepcopy(lm), use_sampling=False)
    outputs = []
    lm.out_norm.register_forward_hook(lambda module, args, out: outputs.append(out))
    with_heads = LMGen(lm, use_sampling=False)
    with plain.streaming(2), with_heads.streaming(2):
        for step in range(4):
            user = user_input(case.io["user_audio"], step)
            expected = plain.step(user)
            out = with_heads.step_with_extra_heads(user)
            if expected is None:
                assert out is None
                continue
            tokens, heads = out
            assert torch.equal(tokens, expected)
            for head, probabilities in zip(lm.extra_heads, heads, strict=True):
                assert probabilities.shape == (2, 1, 5)
                torch.testing.assert_close(probabilities, torch.softmax(head(outputs[-1]), dim=-1))

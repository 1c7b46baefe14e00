"""`LMGen.step_with_logits`: exact teacher-forced logits from the streaming state, same tokens as `step`."""

from __future__ import annotations

import json

import pytest
import torch
from lm_fixtures import load_case, replace_tokens, teacher_forced_pass, user_input
from torch.nn import functional as F

from moshi.models.lm import LMGen


def _concatenated(outputs: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Audio logits, text logits and tokens of a teacher-forced pass, along time, on the CPU."""
    return tuple(torch.cat([getattr(o, name) for o in outputs], dim=2).cpu()
                 for name in ("audio_logits", "text_logits", "tokens"))


def _assert_logits_match_fixture(lm_case, audio_logits, text_logits, tokens, ce_mean_atol: float) -> torch.Tensor:
    """The checks shared by the CPU and CUDA parity tests; returns the per-token cross-entropy `[B, dep_q, T]`."""
    io = lm_case.io
    mask = io["teacher_forced.mask"]
    torch.testing.assert_close(audio_logits[mask], io["teacher_forced.logits"][mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(text_logits, io["teacher_forced.text_logits"], atol=1e-4, rtol=0)
    assert torch.equal(tokens[:, 1:], io["own_audio"])
    ce = F.cross_entropy(audio_logits.permute(0, 3, 1, 2), tokens[:, 1:], reduction="none")
    assert abs(ce[mask].mean().item() - lm_case.meta["teacher_forced.ce_mean"]) <= ce_mean_atol
    return ce


def test_teacher_forced_logits_match_upstream(lm_case):
    lm = lm_case.model()
    io = lm_case.io
    with LMGen(lm, use_sampling=False).streaming(lm_case.batch_size) as session:
        outputs = teacher_forced_pass(session.module, io["own_audio"], io["user_audio"])
    assert len(outputs) == lm_case.num_frames
    audio_logits, text_logits, tokens = _concatenated(outputs)
    ce = _assert_logits_match_fixture(lm_case, audio_logits, text_logits, tokens, ce_mean_atol=1e-5)
    assert torch.equal(tokens[:, :1], io["teacher_forced.text_pred"])
    mask = io["teacher_forced.mask"]
    torch.testing.assert_close(ce[mask], io["teacher_forced.ce_per_token"], atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_teacher_forced_logits_match_upstream_on_cuda_with_graphs(lm_case, monkeypatch):
    """The same parity on a GPU, float32 without TF32, with the main and depformer passes captured as CUDA graphs."""
    monkeypatch.delenv("NO_CUDA_GRAPH", raising=False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    io = lm_case.io
    lm_gen = LMGen(lm_case.model().cuda(), use_sampling=False)
    with lm_gen.streaming(lm_case.batch_size):
        outputs = teacher_forced_pass(lm_gen, io["own_audio"], io["user_audio"])
        state = lm_gen.streaming_state
        assert state.graphed_main.is_captured and state.graphed_forced_depformer.is_captured
    _assert_logits_match_fixture(lm_case, *_concatenated(outputs), ce_mean_atol=1e-4)


def test_mapping_access(lm_case):
    lm = lm_case.model()
    lm_gen = LMGen(lm, use_sampling=False)
    with lm_gen.streaming(lm_case.batch_size):
        outputs = teacher_forced_pass(lm_gen, lm_case.io["own_audio"][:, :, :2], lm_case.io["user_audio"][:, :, :2])
    out = outputs[0]
    assert out["audio_logits"] is out.audio_logits
    assert set(out) == {"tokens", "text_logits", "audio_logits", "transformer_out"}
    assert out.audio_logits.shape == (lm_case.batch_size, lm.dep_q, 1, lm.card)
    assert out.text_logits.shape == (lm_case.batch_size, 1, 1, lm.text_card_out)


@pytest.mark.parametrize("use_sampling", [False, True])
def test_same_tokens_as_step(parity_dir, use_sampling):
    case = load_case(parity_dir, "lm_moshiko_tiny")
    lm = case.model()
    user = case.io["user_audio"]
    runs = []
    for method in ("step", "step_with_logits"):
        torch.manual_seed(7)
        lm_gen = LMGen(lm, use_sampling=use_sampling, temp=1.0, temp_text=1.0, top_k=10, top_k_text=10)
        tokens = []
        with lm_gen.streaming(2):
            for step in range(case.num_frames + 2):
                out = getattr(lm_gen, method)(user_input(user, step))
                assert (out is None) == (step < lm_gen.max_delay)
                if out is not None:
                    tokens.append(out if method == "step" else out.tokens)
        runs.append(torch.cat(tokens, dim=2))
    assert torch.equal(runs[0], runs[1])


def test_logits_are_the_ones_tokens_were_drawn_from(parity_dir):
    case = load_case(parity_dir, "lm_moshiko_tiny")
    lm_gen = LMGen(case.model(), use_sampling=False)
    with lm_gen.streaming(2):
        for step in range(8):
            out = lm_gen.step_with_logits(user_input(case.io["user_audio"], step))
            if out is not None:
                assert torch.equal(out.audio_logits.argmax(-1), out.tokens[:, 1:])
                assert torch.equal(out.text_logits.argmax(-1), out.tokens[:, :1])


def test_one_main_and_dep_q_depformer_invocations_per_call(parity_dir):
    case = load_case(parity_dir, "lm_moshiko_tiny")
    lm = case.model()
    calls = {"main": 0, "depformer": 0}
    lm.transformer.register_forward_hook(lambda *_: calls.__setitem__("main", calls["main"] + 1))
    lm.depformer.register_forward_hook(lambda *_: calls.__setitem__("depformer", calls["depformer"] + 1))
    lm_gen = LMGen(lm, use_sampling=False)
    io = case.io
    with lm_gen.streaming(2):
        for step in range(5):
            before = dict(calls)
            own = replace_tokens(io["own_audio"], lm.delays, step)
            lm_gen.step_with_logits(user_input(io["user_audio"], step), own)
            assert calls["main"] - before["main"] == 1
            assert calls["depformer"] - before["depformer"] == lm.dep_q


def test_reset_of_one_item_midway_matches_a_fresh_run(parity_dir):
    case = load_case(parity_dir, "lm_moshiko_tiny")
    lm = case.model()
    io = case.io
    own, user = io["own_audio"], io["user_audio"]
    lm_gen = LMGen(lm, use_sampling=False)
    with lm_gen.streaming(1):
        fresh = teacher_forced_pass(lm_gen, own[1:], user[1:])
    with lm_gen.streaming(2):
        teacher_forced_pass(lm_gen, own[:, :, :7], user[:, :, :7])
        lm_gen.reset_streaming(torch.tensor([False, True]))
        lm_gen.set_exec_mask(torch.tensor([False, True]))
        after = teacher_forced_pass(lm_gen, own, user)
    for fresh_out, out in zip(fresh, after):
        torch.testing.assert_close(out.audio_logits[1:], fresh_out.audio_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.text_logits[1:], fresh_out.text_logits, atol=1e-5, rtol=0)
        assert torch.equal(out.tokens[1:], fresh_out.tokens)
        assert (out.tokens[:1] == lm_gen.lm_model.ungenerated_token_id).all()


def test_fixture_meta_names_the_mean(parity_dir):
    meta = json.loads((parity_dir / "lm_moshiko_tiny" / "meta.json").read_text())
    assert "teacher_forced.ce_mean" in meta


def test_forced_text_is_used_and_validated(parity_dir):
    case = load_case(parity_dir, "lm_moshiko_tiny")
    lm = case.model()
    lm_gen = LMGen(lm, use_sampling=False)
    pad = torch.full((2,), lm.text_padding_token_id)
    with lm_gen.streaming(2):
        outputs = [lm_gen.step_with_logits(user_input(case.io["user_audio"], s), text_replace_tokens=pad)
                   for s in range(4)]
        assert all((o.tokens[:, 0] == lm.text_padding_token_id).all() for o in outputs[1:])
        with pytest.raises(ValueError, match="text_replace_tokens: token"):
            lm_gen.step_with_logits(user_input(case.io["user_audio"], 4), text_replace_tokens=pad + lm.text_card)

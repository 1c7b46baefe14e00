"""An LMModel with TTT layers: streaming (per step and chunked) equals the parallel forward past context and
mini-batches."""

from __future__ import annotations

import pytest
import torch
from lm_fixtures import replace_tokens, teacher_forced_pass, user_input

from moshi.models.lm import LMGen, LMModel
from moshi.modules.ttt import TTTBlock

FRAMES = 45  # > context 6 and > 2 mini-batches of 16


def _ttt_model(variant: str) -> LMModel:
    torch.manual_seed(3)
    lm = LMModel(
        delays=[0, 0, 1, 1, 0, 1, 1], n_q=6, dep_q=3, card=24, text_card=20, dim=32, num_heads=4, num_layers=3,
        context=6, norm="rms_norm_f32", gating="silu", positional_embedding="rope", depformer_dim=16,
        depformer_num_heads=2, depformer_num_layers=1, depformer_multi_linear=True, depformer_weights_per_step=True,
        depformer_pos_emb="none", depformer_gating="silu",
        ttt={"layers": "1,2", "variant": variant, "mini_batch_size": 16},
    ).eval()
    with torch.no_grad():
        for block in lm.modules():
            if isinstance(block, TTTBlock):
                block.gating_alpha.fill_(1.0)
    return lm


@pytest.fixture(scope="module", params=["linear", "mlp"])
def ttt_model(request) -> LMModel:
    return _ttt_model(request.param)


def _sequence(lm: LMModel, batch: int = 2):
    generator = torch.Generator().manual_seed(11)
    own = torch.randint(0, lm.card, (batch, lm.dep_q, FRAMES), generator=generator)
    user = torch.randint(0, lm.card, (batch, lm.n_q - lm.dep_q, FRAMES), generator=generator)
    return own, user


def test_ttt_layers_are_placed_where_configured(ttt_model):
    with_ttt = [i for i, layer in enumerate(ttt_model.transformer.layers) if layer.ttt is not None]
    assert with_ttt == [1, 2]
    assert all(hasattr(ttt_model.transformer.layers[i].ttt, "ttt_layer") for i in with_ttt)
    assert not any(isinstance(m, TTTBlock) for m in ttt_model.depformer.modules())


def test_step_with_logits_equals_forward(ttt_model):
    lm = ttt_model
    own, user = _sequence(lm)
    lm_gen = LMGen(lm, use_sampling=False)
    with lm_gen.streaming(2):
        outputs = teacher_forced_pass(lm_gen, own, user)
    text = torch.cat([o.tokens[:, :1] for o in outputs], dim=2)
    audio_logits = torch.cat([o.audio_logits for o in outputs], dim=2)
    with torch.no_grad():
        reference = lm(torch.cat([text, own, user], dim=1))
    mask = reference.mask
    assert mask[:, :, : FRAMES - 1].all()
    torch.testing.assert_close(audio_logits[mask], reference.logits[mask], atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphed_steps_equal_cpu_steps_with_ttt(ttt_model, monkeypatch):
    """Per-step TTT updates (a mini-batch completing every 16 steps) stay exact when steps replay CUDA graphs."""
    monkeypatch.delenv("NO_CUDA_GRAPH", raising=False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    own, user = _sequence(ttt_model)
    runs = {}
    for device in ("cpu", "cuda"):
        lm_gen = LMGen(ttt_model.to(device), use_sampling=False)
        with lm_gen.streaming(2):
            outputs = teacher_forced_pass(lm_gen, own, user)
            if device == "cuda":
                assert lm_gen.streaming_state.graphed_main.is_captured
        runs[device] = torch.cat([o.audio_logits for o in outputs], dim=2).cpu()
    ttt_model.to("cpu")
    torch.testing.assert_close(runs["cuda"], runs["cpu"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunks_equal_per_step_with_ttt(ttt_model, chunk):
    lm = ttt_model
    own, user = _sequence(lm)
    lm_gen = LMGen(lm, use_sampling=False)
    steps = FRAMES + lm_gen.max_delay
    users = torch.cat([user_input(user, s) for s in range(steps)], dim=2)
    owns = torch.cat([replace_tokens(own, lm.delays, s) for s in range(steps)], dim=2)
    with lm_gen.streaming(2):
        expected = teacher_forced_pass(lm_gen, own, user)
    with lm_gen.streaming(2):
        chunks = [lm_gen.step_chunk_with_logits(users[:, :, s: s + chunk], owns[:, :, s: s + chunk])
                  for s in range(0, steps, chunk)]
    got = torch.cat([c.audio_logits for c in chunks], dim=2)
    torch.testing.assert_close(got, torch.cat([o.audio_logits for o in expected], dim=2), atol=1e-4, rtol=0)
    assert torch.equal(torch.cat([c.tokens for c in chunks], dim=2), torch.cat([o.tokens for o in expected], dim=2))


def test_parameters_unchanged_by_streaming(ttt_model):
    before = {k: v.clone() for k, v in ttt_model.state_dict().items()}
    own, user = _sequence(ttt_model)
    lm_gen = LMGen(ttt_model, use_sampling=False)
    with lm_gen.streaming(2):
        teacher_forced_pass(lm_gen, own, user)
    assert all(torch.equal(before[k], v) for k, v in ttt_model.state_dict().items())

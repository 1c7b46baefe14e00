"""`LMGen.step_chunk_with_logits`: C steps per call equal C calls of `step_with_logits` (pad and greedy text)."""

from __future__ import annotations

import functools

import pytest
import torch
from lm_fixtures import replace_tokens, user_input

from moshi.models.lm import LMGen, LMModel
from moshi.models.lm_chunks import WindowPolicy
from moshi.models.lm_utils import teacher_forced_step_inputs

CHUNK_SIZES = (1, 7, 64)
pytestmark = pytest.mark.usefixtures("single_thread")


def _step_inputs(lm, own: torch.Tensor, user: torch.Tensor, num_steps: int):
    users = torch.cat([user_input(user, s) for s in range(num_steps)], dim=2)
    owns = torch.cat([replace_tokens(own, lm.delays, s) for s in range(num_steps)], dim=2)
    return users, owns


def _per_step(lm_gen: LMGen, users, owns, text):
    outputs = []
    with lm_gen.streaming(users.shape[0]):
        for s in range(users.shape[2]):
            forced = None if text is None else text[:, s]
            out = lm_gen.step_with_logits(users[:, :, s: s + 1], owns[:, :, s: s + 1], text_replace_tokens=forced)
            if out is not None:
                outputs.append(out)
    return [torch.cat([getattr(o, name) for o in outputs], dim=2) for name in ("tokens", "text_logits", "audio_logits")]


def _chunked(lm_gen: LMGen, users, owns, text, chunk: int):
    outputs = []
    with lm_gen.streaming(users.shape[0]):
        for s in range(0, users.shape[2], chunk):
            part = slice(s, s + chunk)
            forced = None if text is None else text[:, part]
            out = lm_gen.step_chunk_with_logits(users[:, :, part], owns[:, :, part], text_replace_tokens=forced)
            outputs.append(out)
    names = ("tokens", "text_logits", "audio_logits")
    merged = [torch.cat([getattr(o, name) for o in outputs], dim=2) for name in names]
    return merged, outputs


@pytest.mark.parametrize("policy", ["pad", "greedy"])
def test_chunks_equal_per_step(lm_case, policy):
    lm = lm_case.model()
    io = lm_case.io
    lm_gen = LMGen(lm, use_sampling=False)
    num_steps = lm_case.num_frames + lm_gen.max_delay
    users, owns = _step_inputs(lm, io["own_audio"], io["user_audio"], num_steps)
    text = None
    if policy == "pad":
        text = torch.full((lm_case.batch_size, num_steps), lm.text_padding_token_id)
    expected = _per_step(lm_gen, users, owns, text)
    for chunk in CHUNK_SIZES:
        got, outputs = _chunked(lm_gen, users, owns, text, chunk)
        assert torch.equal(got[0], expected[0]), f"tokens differ at chunk {chunk}"
        torch.testing.assert_close(got[1], expected[1], atol=1e-4, rtol=0)
        torch.testing.assert_close(got[2], expected[2], atol=1e-4, rtol=0)
        if policy == "pad":
            assert all(o.main_steps == o.transformer_out.shape[1] for o in outputs)


@functools.cache
def _text_following_audio_case(ttt: bool, batch: int) -> tuple[LMModel, torch.Tensor, torch.Tensor, list]:
    """`_text_following_audio_lm` with its first `batch` sequences and their per-step greedy outputs."""
    lm, users, owns = _text_following_audio_lm(ttt)
    users, owns = users[:batch], owns[:batch]
    return lm, users, owns, _per_step(LMGen(lm, use_sampling=False), users, owns, None)


def _text_following_audio_lm(ttt: bool) -> tuple[LMModel, torch.Tensor, torch.Tensor]:
    """A small random LM (context 24, optionally a TTT-MLP layer with mini-batches of 4) whose greedy text follows
    the audio, as a trained model's does: text embedding x0.1 and a padding bias making about 70 % of the text
    padding, so speculation keeps prefixes of many lengths. Returns it with the step inputs of 3 sequences of 60
    frames."""
    torch.manual_seed(7)
    lm = LMModel(
        delays=[0, 0, 1, 1, 0, 1, 1], n_q=6, dep_q=3, card=24, text_card=40, dim=32, num_heads=4, num_layers=2,
        context=24, norm="rms_norm_f32", gating="silu", positional_embedding="rope", depformer_dim=16,
        depformer_num_heads=2, depformer_num_layers=1, depformer_multi_linear=True, depformer_weights_per_step=True,
        depformer_pos_emb="none", bias_proj=True,
        ttt={"layers": "1", "variant": "mlp", "mini_batch_size": 4} if ttt else None,
    ).eval()
    own = torch.randint(0, lm.card, (3, lm.dep_q, 60), generator=torch.Generator().manual_seed(8))
    users, owns = teacher_forced_step_inputs(lm, own)
    pad = lm.text_padding_token_id
    with torch.no_grad():
        lm.text_emb.weight.mul_(0.1)
        lm_gen = LMGen(lm, use_sampling=False)
        with lm_gen.streaming(3):
            padding = torch.full(users[:, 0].shape, pad)
            logits = lm_gen.step_chunk_with_logits(users, owns, text_replace_tokens=padding).text_logits[:, 0]
        margin = logits.clone().index_fill_(-1, torch.tensor([pad]), float("-inf")).amax(-1) - logits[..., pad]
        lm.text_linear.bias[pad] = torch.quantile(margin.flatten(), 0.7)
    return lm, users, owns


@pytest.mark.parametrize("ttt", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("chunk", CHUNK_SIZES)
def test_greedy_chunks_keep_each_items_own_prefix(ttt, batch, chunk, monkeypatch):
    """Tokens and losses equal per-step greedy scoring while items keep speculative prefixes of their own lengths
    (rolled back without recomputation; TTT items then sit at different mini-batch positions)."""
    lm, users, owns, expected = _text_following_audio_case(ttt, batch)
    lm_gen = LMGen(lm, use_sampling=False)
    text = expected[0][:, 0]
    assert 0.5 < float((text == lm.text_padding_token_id).float().mean()) < 0.9
    keeps = []
    rollback = lm.transformer.rollback_streaming
    monkeypatch.setattr(lm.transformer, "rollback_streaming",
                        lambda checkpoint, keep=None: keeps.append(keep.clone()) or rollback(checkpoint, keep))
    got, outputs = _chunked(lm_gen, users, owns, None, chunk)
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1], atol=1e-4, rtol=0)
    torch.testing.assert_close(got[2], expected[2], atol=1e-4, rtol=0)
    if chunk == 1:
        assert not keeps and all(out.main_steps == 1 for out in outputs)
    if chunk == 64:
        assert any(0 < int(keep.min()) for keep in keeps)
        if batch == 3:
            assert any(len(set(keep.tolist())) == batch for keep in keeps), "items never kept different prefixes"


def test_window_policy_finds_the_cheapest_length_and_follows_changes():
    """Passes cost 10 + L (ms) and keep min(L, run) steps: the cheapest length per kept step is the run's; when the
    runs shorten the policy comes down."""
    policy = WindowPolicy(longest=256, level=2)
    chosen = []
    for run in [64] * 60 + [1] * 60:
        window = policy.window
        chosen.append(window)
        policy.record(10.0 + window, min(window, run))
    assert chosen[20:60].count(64) >= 25
    assert chosen[-20:].count(1) >= 14


def test_window_policy_climbs_on_windows_kept_whole():
    policy = WindowPolicy(longest=64, level=2)
    chosen = []
    for _ in range(6):
        chosen.append(policy.window)
        policy.record(1.0, policy.window, whole=True)
    assert chosen == [4, 8, 16, 32, 64, 64]


def test_window_policy_counts_a_pass_by_its_executing_items():
    policy = WindowPolicy(longest=8, level=1, period=1)
    policy.record(1.0, 2, executing=0.25)
    assert policy.costs[1] == pytest.approx(0.125)


def test_ring_step_inputs_only_read(lm_case):
    lm = lm_case.model()
    lm_gen = LMGen(lm, use_sampling=False)
    users, owns = _step_inputs(lm, lm_case.io["own_audio"], lm_case.io["user_audio"], 8)
    with lm_gen.streaming(lm_case.batch_size):
        lm_gen.step_with_logits(users[:, :, :1], owns[:, :, :1])
        ring = lm_gen.streaming_state.ring
        before = ring.tokens.clone()
        ahead = torch.cat([torch.zeros(lm_case.batch_size, 1, 6, dtype=torch.long), owns[:, :, 1:7]], dim=1)
        first = ring.step_inputs(users[:, :, 1:8], ahead, lm_gen.streaming_state.exec_mask)
        second = ring.step_inputs(users[:, :, 1:8], ahead, lm_gen.streaming_state.exec_mask)
        assert torch.equal(first, second) and torch.equal(ring.tokens, before)


def test_chunk_then_steps_continue_the_same_stream(lm_case):
    lm = lm_case.model()
    io = lm_case.io
    lm_gen = LMGen(lm, use_sampling=False)
    num_steps = lm_case.num_frames + lm_gen.max_delay
    users, owns = _step_inputs(lm, io["own_audio"], io["user_audio"], num_steps)
    expected = _per_step(lm_gen, users, owns, None)
    with lm_gen.streaming(lm_case.batch_size):
        first = lm_gen.step_chunk_with_logits(users[:, :, :9], owns[:, :, :9])
        rest = [lm_gen.step_with_logits(users[:, :, s: s + 1], owns[:, :, s: s + 1]) for s in range(9, num_steps)]
    audio = torch.cat([first.audio_logits, *[o.audio_logits for o in rest]], dim=2)
    torch.testing.assert_close(audio, expected[2], atol=1e-4, rtol=0)


def test_out_of_sync_chunks_keep_every_step_and_per_item_resets(lm_case):
    """With `support_out_of_sync`, a chunk returns one frame per step (incomplete ones marked ungenerated), and an item
    reset between chunks restarts alone: its frames then equal a fresh run's, the other item's continue unchanged."""
    lm = lm_case.model()
    io = lm_case.io
    lm_gen = LMGen(lm, use_sampling=False, support_out_of_sync=True)
    num_steps = lm_case.num_frames + lm_gen.max_delay
    users, owns = _step_inputs(lm, io["own_audio"], io["user_audio"], num_steps)
    pad = torch.full((lm_case.batch_size, num_steps), lm.text_padding_token_id)
    expected = _per_step(LMGen(lm, use_sampling=False), users, owns, pad)
    split = 6
    rest = num_steps - split

    def then(inputs: torch.Tensor) -> torch.Tensor:  # item 0 continues its stream, item 1 starts again
        return torch.stack([inputs[0, ..., split:], inputs[1, ..., :rest]])

    with lm_gen.streaming(lm_case.batch_size):
        first = lm_gen.step_chunk_with_logits(users[:, :, :split], owns[:, :, :split],
                                              text_replace_tokens=pad[:, :split])
        lm_gen.reset_streaming(torch.tensor([False, True]))
        restarted = lm_gen.step_chunk_with_logits(then(users), then(owns), text_replace_tokens=then(pad))
    max_delay = lm_gen.max_delay
    assert first.audio_logits.shape[2] == split and restarted.audio_logits.shape[2] == num_steps - split
    assert (first.tokens[:, :, :max_delay] == lm.ungenerated_token_id).all()
    assert (restarted.tokens[1, :, :max_delay] == lm.ungenerated_token_id).all()
    continued = torch.cat([first.audio_logits[0, :, max_delay:], restarted.audio_logits[0]], dim=1)
    torch.testing.assert_close(continued, expected[2][0, :, : continued.shape[1]], atol=1e-4, rtol=0)
    fresh = restarted.audio_logits[1, :, max_delay:]
    torch.testing.assert_close(fresh, expected[2][1, :, : fresh.shape[1]], atol=1e-4, rtol=0)


def test_chunk_input_errors(lm_case):
    lm_gen = LMGen(lm_case.model(), use_sampling=True)
    B = lm_case.batch_size
    users = torch.zeros(B, 8, 4, dtype=torch.long)
    owns = torch.zeros(B, 8, 4, dtype=torch.long)
    with lm_gen.streaming(B):
        with pytest.raises(ValueError, match="greedy"):
            lm_gen.step_chunk_with_logits(users, owns)
        with pytest.raises(ValueError, match="dep_q"):
            lm_gen.step_chunk_with_logits(users, owns[:, :3])
        lm_gen.set_exec_mask(torch.tensor([True, False]))
        with pytest.raises(ValueError, match="exec mask"):
            lm_gen.step_chunk_with_logits(users, owns, text_replace_tokens=torch.zeros(B, 4, dtype=torch.long))


def test_teacher_forced_step_inputs_follow_the_fixture_layout(lm_case):
    from moshi.models.lm_utils import teacher_forced_step_inputs

    lm = lm_case.model()
    own, user = lm_case.io["own_audio"], lm_case.io["user_audio"]
    users, owns = teacher_forced_step_inputs(lm, own, user)
    expected_users, expected_owns = _step_inputs(lm, own, user, lm_case.num_frames + max(lm.delays))
    assert torch.equal(users, expected_users)
    assert torch.equal(owns, expected_owns)

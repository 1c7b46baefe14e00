"""`LMGen.step_chunk_with_logits`: C steps per call equal C calls of `step_with_logits` (pad and greedy text)."""

from __future__ import annotations

import pytest
import torch
from lm_fixtures import replace_tokens, user_input

from moshi.models.lm import LMGen

CHUNK_SIZES = (1, 7, 64)


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

"""Chunked scoring with per-slot refills: every slot takes the next sequence when its own ends, and the losses equal
the per-step scorer's and a parallel `LMModel.forward`'s (text policy `zero`, cross-stream targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lm_fixtures import load_case
from ttt_lm import small_ttt_lm

from moshi.models.lm import LMGen, LMModel
from moshi_eval.scoring.scorer import ChunkedScorer, ScoringItem, StepScorer, token_cross_entropy

LENGTHS = (23, 9, 41, 5, 17, 30, 12)


@pytest.fixture(scope="module")
def lm(parity_dir):
    return load_case(parity_dir, "lm_moshiko_tiny").model()


@pytest.fixture(scope="module")
def items(lm):
    """Sequences of mixed lengths (some past the attention context), with and without a user stream, one scored
    against targets other than its forced own stream."""
    generator = torch.Generator().manual_seed(0)
    made = []
    for index, length in enumerate(LENGTHS):
        own = torch.randint(0, lm.card, (8, length), generator=generator)
        user = torch.randint(0, lm.card, (8, length), generator=generator) if index % 2 else None
        targets = torch.randint(0, lm.card, (8, length), generator=generator) if index == 3 else None
        made.append(ScoringItem(f"seq{index}", own, user, targets))
    return made


def scores(scorer, items, batch_size) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    scorer.run(items, batch_size, lambda scored: found.__setitem__(scored.sequence_id, scored.codebook_losses))
    return found


@pytest.mark.parametrize("policy", ["zero", "pad", "greedy"])
def test_refilled_slots_equal_the_per_step_scorer(lm, items, policy):
    expected = scores(StepScorer(lm, text_policy=policy), items, 1)
    for batch_size, chunk_size in ((3, 7), (4, 1), (7, 64)):
        got = scores(ChunkedScorer(lm, text_policy=policy, chunk_size=chunk_size), items, batch_size)
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], atol=1e-5, rtol=0, equal_nan=True)


def test_similar_lengths_run_in_rounds_of_one_call(lm):
    generator = torch.Generator().manual_seed(1)
    lengths = [10, 10, 9, 10, 8, 10, 10, 9, 10, 10, 10, 7]
    same = [ScoringItem(f"u{i}", torch.randint(0, lm.card, (8, n), generator=generator)) for i, n in enumerate(lengths)]
    scorer = ChunkedScorer(lm, text_policy="zero", chunk_size=256)
    got = scores(scorer, same, 4)
    assert scorer.calls == 3 and len(got) == len(same)
    longer = ChunkedScorer(lm, text_policy="zero", chunk_size=4)
    scores(longer, same, 4)
    assert longer.calls == 3 * 3  # 11 steps per round in calls of at most 4


def test_short_utterances_are_called_longest_first_within_the_chunk(lm, monkeypatch):
    """Utterances that fit in one call are grouped longest first, each call a session of its own holding at most
    `batch_size` of them and at most `chunk_size` steps over its slots; the losses are the per-step scorer's."""
    generator = torch.Generator().manual_seed(2)
    lengths = [4, 10, 3, 9, 5, 9]  # + max_delay 1: 11, 10, 10, 6, 5, 4 steps longest first
    utterances = [ScoringItem(f"u{i}", torch.randint(0, lm.card, (8, n), generator=generator))
                  for i, n in enumerate(lengths)]
    sessions = []
    streaming = LMGen.streaming
    monkeypatch.setattr(LMGen, "streaming", lambda self, batch_size: sessions.append(batch_size) or
                        streaming(self, batch_size))
    scorer = ChunkedScorer(lm, text_policy="zero", chunk_size=22)
    got = scores(scorer, utterances, 4)
    assert sessions == [2, 2, 2] and scorer.calls == 3  # 22 // 11 and 22 // 10 slots, then the last two
    expected = scores(StepScorer(lm, text_policy="zero"), utterances, 1)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5, rtol=0, equal_nan=True)


def forward_losses(lm, own: torch.Tensor, user: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-token cross-entropy `[T, dep_q]` of a parallel forward with the zero token as text, and where it is defined
    (the forward's delay mask)."""
    text = torch.full((1, own.shape[1]), lm.zero_token_id, dtype=torch.long)
    with torch.no_grad():
        out = lm.forward(torch.cat([text, own, user])[None])
    defined = torch.ones_like(out.mask[0])
    for k, delay in enumerate(lm.delays[1: 1 + lm.dep_q]):
        if delay:
            defined[k, -delay:] = False
    ce = token_cross_entropy(out.logits[0].nan_to_num(), targets)
    return ce.T.numpy(), defined.T.numpy()


def test_zero_text_and_cross_stream_targets_equal_a_parallel_forward(lm, items):
    """`zero` text and an own stream of zero tokens scored against the user stream's codes (the cross-stream score)."""
    generator = torch.Generator().manual_seed(2)
    utterance = torch.randint(0, lm.card, (8, 19), generator=generator)
    silent_own = torch.full_like(utterance, lm.zero_token_id)
    cross = ScoringItem("cross", silent_own, utterance, utterance)
    zero_user = torch.full((8, items[0].num_frames), lm.zero_token_id)
    got = scores(ChunkedScorer(lm, text_policy="zero", chunk_size=5), [cross, items[0], items[1]], 2)
    cases = {"cross": (silent_own, utterance, utterance), "seq0": (items[0].own, zero_user, items[0].own),
             "seq1": (items[1].own, items[1].user, items[1].own)}
    for key, (own, user, targets) in cases.items():
        expected, defined = forward_losses(lm, own, user, targets)
        np.testing.assert_allclose(got[key][defined], expected[defined], atol=1e-4, rtol=0)
        assert np.isnan(got[key][~defined]).all()


def test_text_policy_is_checked(lm):
    with pytest.raises(ValueError, match="'sample'"):
        ChunkedScorer(lm, text_policy="sample")
    with pytest.raises(ValueError, match="'bogus'"):
        StepScorer(lm, text_policy="bogus")


def test_caches_are_sized_by_the_longest_sequence_not_the_context(parity_dir, items):
    """A model with Moshi's 3000-frame context scores short sequences with caches of their length, the same losses as
    its parallel forward, and gets its context back afterwards."""
    config = load_case(parity_dir, "lm_moshiko_tiny").config | {"context": 3000}
    torch.manual_seed(3)
    lm = LMModel(**config).eval()
    short = [ScoringItem(item.sequence_id, item.own, item.user) for item in items if item.num_frames <= 30]
    longest = max(item.num_frames for item in short) + max(lm.delays)
    attention = lm.transformer.layers[0].self_attn
    capacities = []

    def finished(scored) -> None:
        capacities.append(attention.streaming_state.keys.shape[2])
        got[scored.sequence_id] = scored.codebook_losses

    for scorer in (ChunkedScorer(lm, text_policy="zero", chunk_size=8), StepScorer(lm, text_policy="zero")):
        got: dict[str, np.ndarray] = {}
        scorer.run(short, 3, finished)
        assert set(capacities) == {longest} and attention.context == 3000
        for item in short:
            user = item.user if item.user is not None else torch.full_like(item.own, lm.zero_token_id)
            expected, defined = forward_losses(lm, item.own, user, item.own)
            np.testing.assert_allclose(got[item.sequence_id][defined], expected[defined], atol=1e-4, rtol=0)


def test_refills_stay_exact_with_ttt_layers_and_greedy_text():
    """Slots restarted at different times sit at different TTT mini-batch phases (and roll back greedy speculation)."""
    lm = small_ttt_lm()
    generator = torch.Generator().manual_seed(2)
    ttt_items = [ScoringItem(f"s{i}", torch.randint(0, 32, (3, frames), generator=generator))
                 for i, frames in enumerate((70, 41, 23, 37, 9))]
    expected = scores(StepScorer(lm, text_policy="greedy"), ttt_items, 1)
    got = scores(ChunkedScorer(lm, text_policy="greedy", chunk_size=7), ttt_items, 2)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5, rtol=0, equal_nan=True)

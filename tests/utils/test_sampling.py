"""`sample_token`: upstream 0.2.13's draws under a seed (fixture `tests/fixtures/upstream_sampling`), and what each
restriction allows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moshi.utils.sampling import sample_token

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "upstream_sampling"
META = json.loads((FIXTURE / "meta.json").read_text())


@pytest.mark.parametrize("index, name", list(enumerate(META["token_cases"])))
def test_draws_upstreams_tokens_under_a_seed(index, name):
    io = load_file(FIXTURE / "io.safetensors")
    expected = io[f"sample_token.{name}"]
    torch.manual_seed(1000 + index)
    drawn = torch.stack([sample_token(io["logits"], True, **META["token_cases"][name])
                         for _ in range(expected.shape[0])])
    assert torch.equal(drawn, expected)


def _logits() -> torch.Tensor:
    return 2.0 * torch.randn(4, 30, generator=torch.Generator().manual_seed(0))


def test_greedy_is_the_argmax():
    logits = _logits()
    assert torch.equal(sample_token(logits, use_sampling=False), logits.argmax(-1))
    assert torch.equal(sample_token(logits, use_sampling=True, temp=0.0), logits.argmax(-1))


def test_top_k_draws_only_the_k_most_likely():
    logits = _logits()
    allowed = logits.topk(3, dim=-1).indices
    generator = torch.Generator().manual_seed(1)
    drawn = torch.stack([sample_token(logits, True, top_k=3, generator=generator) for _ in range(200)], dim=1)
    assert (drawn[:, :, None] == allowed[:, None]).any(-1).all()
    assert all(len(set(row.tolist())) == 3 for row in drawn)


def test_top_p_draws_only_the_nucleus():
    logits = _logits()
    probs = logits.softmax(-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    nucleus_size = ((sorted_probs.cumsum(-1) - sorted_probs) <= 0.6).sum(-1)
    generator = torch.Generator().manual_seed(2)
    drawn = torch.stack([sample_token(logits, True, top_p=0.6, generator=generator) for _ in range(200)], dim=1)
    for row, tokens in enumerate(drawn):
        assert set(tokens.tolist()) == set(order[row, : nucleus_size[row]].tolist())


def test_a_generator_makes_draws_reproducible_and_leaves_the_global_one_alone():
    logits = _logits()
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    first = sample_token(logits, True, top_k=10, generator=torch.Generator().manual_seed(3))
    again = sample_token(logits, True, top_k=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert torch.equal(torch.random.get_rng_state(), before)

"""`ttt_inner_losses` in the LibriLight evaluation: per TTT layer, the same binned w0 / before / after losses in step
mode and chunked mode (greedy speculation, whose rejected steps are rolled back, included), for the reference TTT and a
moshi-finetune config; each bin counts exactly the sequences' steps (no chunked-mode padding); a model without TTT
layers is an error."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from librilight_helpers import random_codes, write_codes
from ttt_lm import small_ttt_lm

from moshi.models.lm import LMModel
from moshi.modules.ttt import TTTConfig
from moshi_eval.librilight import evaluate_librilight

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning",
                                        "ignore:this TTT config reads each mini-batch non-causally")

FRAMES = {"a": 70, "b": 41}
BIN = 10


def small_lm(ttt: TTTConfig | None) -> LMModel:
    """The shape of `small_ttt_lm` with other TTT layers (or none)."""
    torch.manual_seed(3)
    return LMModel(
        delays=[0, 0, 1, 1, 0, 1, 1], n_q=6, dep_q=3, card=32, text_card=20, dim=32, num_heads=4, num_layers=2,
        context=8, norm="rms_norm_f32", gating="silu", positional_embedding="rope", depformer_dim=16,
        depformer_num_heads=2, depformer_num_layers=1, depformer_multi_linear=True, depformer_weights_per_step=True,
        depformer_pos_emb="none", ttt=ttt,
    ).eval()


def finetune_ttt_lm() -> LMModel:
    """The TTT layers our users trained (their causal form streams), mini-batches of 10 steps, RoPE."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return small_lm(TTTConfig.from_moshi_finetune({"enable": True, "layers": "all", "mini_batch_size": 10,
                                                       "use_rope": True}))


@pytest.fixture(scope="module")
def codes_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("codes")
    generator = torch.Generator().manual_seed(2)
    for name, frames in FRAMES.items():
        write_codes(folder, name, random_codes(generator, 3, frames, 32))
    return folder


def inner_losses(lm: LMModel, codes_dir, **settings) -> dict:
    common = {"codes": [str(codes_dir)], "user_stream": "zero", "batch_size": 2, "positions": [40], "window": 20,
              "bin_size": BIN, "progress": False, "ttt_inner_losses": True}
    return evaluate_librilight(lm, None, **(common | settings)).to_dict()["ttt_inner_losses"]


def assert_same(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for layer in expected:
        assert actual[layer]["position"] == expected[layer]["position"]
        assert actual[layer]["count"] == expected[layer]["count"]
        for kind in ("w0", "before", "after"):
            assert [v is None for v in actual[layer][kind]] == [v is None for v in expected[layer][kind]]
            for a, e in zip(actual[layer][kind], expected[layer][kind]):
                if e is not None:
                    assert a == pytest.approx(e, rel=1e-5)


@pytest.mark.parametrize("make_lm", [small_ttt_lm, finetune_ttt_lm], ids=["reference", "from_moshi_finetune"])
def test_step_and_chunked_modes_give_the_same_inner_losses(make_lm, codes_dir):
    lm = make_lm()
    for policy in ("pad", "greedy"):
        stepped = inner_losses(lm, codes_dir, text_policy=policy)
        assert stepped.keys() == {"0", "1"}
        steps = [frames + 1 for frames in FRAMES.values()]  # the sequence's frames and the acoustic delay
        expected_counts = [sum(max(0, min(BIN, n - start)) for n in steps) for start in range(0, max(steps), BIN)]
        for layer in stepped.values():
            assert layer["position"] == list(range(0, max(steps), BIN)) and layer["count"] == expected_counts
            assert layer["before"][0] == layer["w0"][0]
            assert layer["after"][-1] is None  # the last mini-batch of the longer sequence never completes
        for chunk in (7, 64):
            assert_same(inner_losses(lm, codes_dir, text_policy=policy, mode="chunked", chunk_size=chunk), stepped)


def test_off_by_default_and_an_error_without_ttt_layers(codes_dir):
    data = evaluate_librilight(small_ttt_lm(), None, codes=[str(codes_dir)], user_stream="zero", positions=[40],
                               window=20, progress=False).to_dict()
    assert "ttt_inner_losses" not in data
    with pytest.raises(ValueError, match="no TTT layers"):
        inner_losses(small_lm(None), codes_dir)


def test_ranks_add_up_their_inner_losses():
    """Under torchrun every rank adds the others' sums (what `all_gather_bytes` brings back, its own part included)."""
    from types import SimpleNamespace

    from moshi.modules.ttt_inner_losses import InnerLossBins
    from moshi_eval.librilight.evaluate import LibriLightRun

    def bins(scale: float) -> dict[int, InnerLossBins]:
        made = InnerLossBins.zeros(2, 6, "cpu")
        positions = torch.arange(6)[None]
        for kind in range(3):
            made.add(kind, positions, scale * (kind + 1) * torch.ones(1, 6), positions < 4 + kind)
        return {3: made}

    other = bins(3.0)[3]
    payload = json.dumps({"3": [other.totals.tolist(), other.counts.tolist()]}).encode()

    class TwoRanks:
        enabled = True

        def all_gather_bytes(self, mine: bytes) -> list[bytes]:
            return [mine, payload]

    summary = LibriLightRun.gathered_inner_losses(SimpleNamespace(context=TwoRanks()), bins(1.0))
    assert summary == {"3": {"position": [0, 2, 4], "w0": [2.0, 2.0, None], "before": [4.0, 4.0, 4.0],
                             "after": [6.0, 6.0, 6.0], "count": [4, 4, 0]}}

"""moshi-finetune TTT checkpoint keys -> our TTTBlock layout, on a synthetic checkpoint with their names and layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moshi.modules.ttt import TTTBlock, TTTConfig
from moshi.modules.ttt_checkpoint import map_finetune_ttt_state_dict, warn_unmatched_ttt_keys

DIM, HEADS = 16, 2
HEAD_DIM = DIM // HEADS
TTT_LAYERS = (1, 2)


class Layer(nn.Module):
    def __init__(self, ttt: TTTBlock | None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM)
        self.ttt = ttt


class Transformer(nn.Module):
    def __init__(self, variant: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Layer(TTTBlock(DIM, HEADS, TTTConfig(variant=variant)) if i in TTT_LAYERS else None) for i in range(3)
        )


class Model(nn.Module):
    def __init__(self, variant: str) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, DIM)
        self.transformer = Transformer(variant)


def their_ttt_tensors(variant: str) -> dict[str, torch.Tensor]:
    """One TTT layer as moshi-finetune saves it (names under `seq_modeling_block.ttt_layer.ttt.`)."""
    hidden = 4 * HEAD_DIM if variant == "mlp" else HEAD_DIM
    tensors = {
        "W1": torch.randn(HEADS, HEAD_DIM, hidden),
        "b1": torch.randn(HEADS, 1, hidden),
        "ttt_norm_weight": torch.randn(HEADS, HEAD_DIM),
        "ttt_norm_bias": torch.randn(HEADS, HEAD_DIM),
        "learnable_ttt_lr_weight": torch.randn(HEADS, 1, DIM),
        "learnable_ttt_lr_bias": torch.randn(HEADS, 1),
        "post_norm.weight": torch.randn(DIM),
        "post_norm.bias": torch.randn(DIM),
    }
    if variant == "mlp":
        tensors.update({"W2": torch.randn(HEADS, hidden, HEAD_DIM), "b2": torch.randn(HEADS, 1, HEAD_DIM)})
    for projection in ("wq", "wk", "wv", "wo"):
        tensors[f"{projection}.weight"] = torch.randn(DIM, DIM)
        tensors[f"{projection}.bias"] = torch.randn(DIM)
    return tensors


def their_checkpoint(variant: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A full synthetic checkpoint, and the keys that have no counterpart in our layout."""
    torch.manual_seed(0)
    checkpoint = {"emb.weight": torch.randn(5, DIM), "transformer.layers.0.norm1.weight": torch.randn(DIM),
                  "transformer.layers.0.norm1.bias": torch.randn(DIM)}
    no_counterpart = []
    for i in TTT_LAYERS:
        layer = f"transformer.layers.{i}."
        for name, tensor in their_ttt_tensors(variant).items():
            checkpoint[f"{layer}seq_modeling_block.ttt_layer.ttt.{name}"] = tensor
        checkpoint[f"{layer}seq_modeling_block.forward_ssm_gating.gating_alpha"] = torch.randn(DIM)
        for part in ("weight", "bias"):
            wrapped = torch.randn(DIM)
            checkpoint[f"{layer}original_layer.norm1.{part}"] = wrapped
            checkpoint[f"{layer}seq_modeling_block.original_layer.norm1.{part}"] = wrapped.clone()
        extra = [f"{layer}seq_modeling_block.backward_ssm_gating.gating_alpha",
                 f"{layer}seq_modeling_block.ttt_layer.ttt.learnable_token_idx"]
        for key in extra:
            checkpoint[key] = torch.randn(DIM)
        no_counterpart += extra
    return checkpoint, sorted(no_counterpart)


@pytest.mark.parametrize("variant", ["linear", "mlp"])
def test_mapping_loads_strictly_and_keeps_values(variant: str) -> None:
    checkpoint, no_counterpart = their_checkpoint(variant)
    mapped, unmatched = map_finetune_ttt_state_dict(checkpoint)
    assert unmatched == no_counterpart

    model = Model(variant)
    model.load_state_dict(mapped, strict=True)

    assert torch.equal(model.emb.weight, checkpoint["emb.weight"])
    for i in TTT_LAYERS:
        theirs = f"transformer.layers.{i}.seq_modeling_block."
        block = model.transformer.layers[i].ttt
        layer = block.ttt_layer
        wrapped = checkpoint[f"transformer.layers.{i}.original_layer.norm1.weight"]
        assert torch.equal(model.transformer.layers[i].norm1.weight, wrapped)
        assert torch.equal(block.gating_alpha, checkpoint[theirs + "forward_ssm_gating.gating_alpha"])
        for name in ("W1", "b1", "ttt_norm_weight", "ttt_norm_bias") + (("W2", "b2") if variant == "mlp" else ()):
            assert torch.equal(getattr(layer, name), checkpoint[theirs + "ttt_layer.ttt." + name])
        assert torch.equal(layer.wq.weight, checkpoint[theirs + "ttt_layer.ttt.wq.weight"])
        assert torch.equal(layer.wo.bias, checkpoint[theirs + "ttt_layer.ttt.wo.bias"])

        # their learning-rate gate (ttt-lm-pytorch layout) gives the same per-head logits as our lr_gate
        x = torch.randn(3, 7, DIM)
        w = checkpoint[theirs + "ttt_layer.ttt.learnable_ttt_lr_weight"]
        b = checkpoint[theirs + "ttt_layer.ttt.learnable_ttt_lr_bias"]
        their_logits = torch.einsum("btc,hoc->bth", x, w) + b.reshape(1, 1, -1)
        with torch.no_grad():
            torch.testing.assert_close(layer.lr_gate(x), their_logits)


def test_flat_layouts_are_accepted() -> None:
    checkpoint, _ = their_checkpoint("linear")
    prefix = "transformer.layers.1.seq_modeling_block.ttt_layer.ttt."
    checkpoint[prefix + "learnable_ttt_lr_weight"] = checkpoint[prefix + "learnable_ttt_lr_weight"][:, 0]
    checkpoint[prefix + "learnable_ttt_lr_bias"] = checkpoint[prefix + "learnable_ttt_lr_bias"][:, 0]
    checkpoint[prefix + "wq"] = checkpoint.pop(prefix + "wq.weight")
    mapped, _ = map_finetune_ttt_state_dict(checkpoint)
    Model("linear").load_state_dict(mapped, strict=True)
    assert torch.equal(mapped["transformer.layers.1.ttt.ttt_layer.wq.weight"], checkpoint[prefix + "wq"])


def test_bad_shapes_and_conflicts_raise() -> None:
    checkpoint, _ = their_checkpoint("linear")
    prefix = "transformer.layers.1.seq_modeling_block."
    bad = dict(checkpoint)
    bad[prefix + "ttt_layer.ttt.learnable_ttt_lr_weight"] = torch.randn(HEADS, 2, DIM)
    with pytest.raises(ValueError, match="learnable_ttt_lr_weight"):
        map_finetune_ttt_state_dict(bad)
    conflicting = dict(checkpoint)
    conflicting[prefix + "original_layer.norm1.weight"] = torch.randn(DIM)
    with pytest.raises(ValueError, match="differ"):
        map_finetune_ttt_state_dict(conflicting)


def test_warning_lists_unmatched_keys() -> None:
    checkpoint, no_counterpart = their_checkpoint("mlp")
    _, unmatched = map_finetune_ttt_state_dict(checkpoint)
    with pytest.warns(UserWarning, match="backward_ssm_gating") as record:
        warn_unmatched_ttt_keys(unmatched, "synthetic.safetensors")
    message = str(record[0].message)
    assert "synthetic.safetensors" in message and all(key in message for key in no_counterpart)

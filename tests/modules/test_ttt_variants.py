"""TTTConfig beyond the reference: moshi-finetune sections, the fields that name each difference, their validation, the
causal form streaming exactly at the layer level, and the checkpointed mini-batch scan."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from moshi.modules.ttt import TTTBlock, TTTConfig, TTTLayer
from moshi.modules.ttt_finetune import TRAINING_ONLY_KEYS
from moshi.modules.ttt_inner import minibatch_rope_angles, normalized_target, rotate_adjacent_pairs

DIM, HEADS = 32, 4


def finetune_config(section: dict) -> TTTConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TTTConfig.from_moshi_finetune(section)


def test_their_defaults_and_every_difference_named():
    config = finetune_config({"enable": True})
    assert config == TTTConfig(
        layers="middle", variant="mlp", mini_batch_size=16, base_lr=1.0, initial_gating_alpha=0.1, mlp_layers=2,
        mlp_expansion=4, output_projection=False, qk_l2_norm=True, rope=False, target_norm=True, ln_eps=1e-8,
        minibatch_causal=False, inner_step_divisor="mini_batch", pad_to_minibatch=True, query_update_count=1,
        gate_clamp=3.0,
    )
    reference = TTTConfig()
    assert (reference.output_projection, reference.qk_l2_norm, reference.minibatch_causal, reference.gate_clamp) == (
        True, False, True, None)


def test_deep_mlp_sizes_follow_their_rules():
    two = finetune_config({"enable": True, "ttt_mlp_layers": 2, "ttt_mlp_expansion_factor": 2.0})
    assert two.mlp_expansion == 4 and two.inner_dims(8) == [8, 32, 8] and two.query_update_count == 1
    three = finetune_config({"enable": True, "ttt_mlp_layers": 3, "ttt_mlp_expansion_factor": 2.5})
    assert three.inner_dims(8) == [8, 20, 20, 8] and three.query_update_count == 2
    custom = finetune_config({"enable": True, "ttt_mlp_layers": 4, "ttt_mlp_hidden_dims": [5, 6, 7]})
    assert custom.inner_dims(8) == [8, 5, 6, 7, 8]
    layer = TTTLayer(DIM, HEADS, custom)
    assert [tuple(getattr(layer, f"W{i}").shape) for i in (1, 2, 3, 4)] == [(4, 8, 5), (4, 5, 6), (4, 6, 7), (4, 7, 8)]


def test_training_only_keys_are_named_in_one_note():
    section = {key: None for key in TRAINING_ONLY_KEYS} | {"enable": True, "rope_theta": 50.0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TTTConfig.from_moshi_finetune(section)
    assert len(caught) == 1 and issubclass(caught[0].category, UserWarning)
    message = str(caught[0].message)
    assert all(key in message for key in (*TRAINING_ONLY_KEYS, "rope_theta"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TTTConfig.from_moshi_finetune({"enable": True, "use_rope": True, "rope_theta": 50.0})
    assert not caught


def test_numeric_strings_convert_as_their_argument_classes_do():
    """YAML reads `1e-3` as a string; their loader converts it to the field's type."""
    config = finetune_config({"enable": True, "base_lr": "1e-3", "mini_batch_size": "8", "rope_theta": "5e2"})
    assert (config.base_lr, config.mini_batch_size, config.rope_theta) == (1e-3, 8, 500.0)
    with pytest.raises(ValueError, match="base_lr"):
        finetune_config({"enable": True, "base_lr": "fast"})


def test_a_disabled_section_has_no_layers():
    with pytest.warns(UserWarning, match="enable"):
        config = TTTConfig.from_moshi_finetune({"layers": "all"})
    assert config.layer_indices(6) == []


def test_their_contexts_apply_per_layer():
    config = finetune_config({"enable": True, "layers": "1,2", "ttt_layer_context": 10, "non_ttt_layer_context": 20})
    assert config.attention_contexts(4) == {0: 20, 1: 10, 2: 10, 3: 20}
    assert TTTConfig(layers="all").attention_contexts(4) == {}


@pytest.mark.parametrize("section, match", [
    ({"enable": True, "use_ropes": True}, "use_ropes"),
    ({"enable": "yes"}, "enable"),
    ({"enable": True, "ttt_mlp_layers": 1}, "mlp_layers"),
    ({"enable": True, "ttt_mlp_layers": 3, "ttt_mlp_hidden_dims": [4]}, "mlp_hidden_dims"),
    ({"enable": True, "mini_batch_size": 0}, "mini_batch_size"),
    ({"enable": True, "layers": "7"}, "out of range"),
])
def test_bad_sections_name_the_key(section, match):
    with pytest.raises(ValueError, match=match):
        config = finetune_config(section)
        config.layer_indices(4)


def test_round_trip_and_section_detection():
    theirs = finetune_config({"enable": True, "layers": "0", "ttt_mlp_layers": 3, "ttt_mlp_expansion_factor": 1.5,
                              "use_rope": True, "ttt_layer_context": 7})
    assert TTTConfig.from_dict(theirs.to_dict()) == theirs
    assert TTTConfig.from_section(theirs.to_dict()) == theirs
    assert TTTConfig.from_section({"enable": True, "layers": "0", "ttt_mlp_layers": 3, "ttt_mlp_expansion_factor": 1.5,
                                   "use_rope": True, "ttt_layer_context": 7}) == theirs
    ours = {"layers": "0", "variant": "mlp", "mini_batch_size": 8}
    assert TTTConfig.from_section(ours) == TTTConfig.from_dict(ours)
    with pytest.raises(ValueError, match="use_ropes"):
        TTTConfig.from_section({"layers": "0", "use_ropes": True})
    with pytest.raises(ValueError, match="chunk"):
        TTTConfig.from_section({"enable": True, "variant": "mlp", "chunk": 3})


@pytest.mark.parametrize("changes, match", [
    ({"minibatch_causal": False}, "inner_step_divisor"),
    ({"inner_step_divisor": "token"}, "inner_step_divisor"),
    ({"qk_l2_norm": 1}, "qk_l2_norm"),
    ({"mlp_layers": 3, "mlp_hidden_dims": [4]}, "mlp_hidden_dims"),
    ({"gate_clamp": 0}, "gate_clamp"),
    ({"scan_checkpoint_group_size": -1}, "scan_checkpoint_group_size"),
    ({"query_update_count": 0}, "query_update_count"),
    ({"ttt_layer_context": 0}, "ttt_layer_context"),
    ({"ln_eps": 0.0}, "ln_eps"),
])
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        TTTConfig(**changes)


def test_rope_is_their_complex_rotation():
    """Pairs (2i, 2i + 1) as complex numbers times exp(i * angle), angle of position p and pair i as they define it."""
    hd, theta = 8, 500.0
    positions = torch.tensor([[0, 1, 2, 3, 0, 1]])
    x = torch.randn(1, 2, 6, hd)
    rotated = rotate_adjacent_pairs(x, minibatch_rope_angles(positions, hd, theta))
    for p in range(6):
        for i in range(hd // 2):
            angle = positions[0, p].item() * theta ** (-2 * i / hd) * (0.5 + 1.5 * math.exp(-2 * i / (2 * hd)))
            z = torch.complex(x[0, :, p, 2 * i], x[0, :, p, 2 * i + 1]) * complex(math.cos(angle), math.sin(angle))
            torch.testing.assert_close(rotated[0, :, p, 2 * i], z.real, atol=1e-5, rtol=0)
            torch.testing.assert_close(rotated[0, :, p, 2 * i + 1], z.imag, atol=1e-5, rtol=0)


def test_normalized_target_uses_the_unbiased_std_plus_eps():
    residual = torch.randn(2, 3, 5, 8)
    weight, bias = torch.randn(3, 8), torch.randn(3, 8)
    centered = residual - residual.mean(-1, keepdim=True)
    std = (centered.pow(2).sum(-1, keepdim=True) / 7).sqrt()
    expected = weight[:, None] * centered / (std + 1e-5) + bias[:, None]
    torch.testing.assert_close(normalized_target(residual, weight, bias), expected)


def their_layer(seed: int = 0, **changes) -> TTTLayer:
    config = dataclasses.replace(
        finetune_config({"enable": True, "mini_batch_size": 4, "ttt_mlp_layers": 3, "ttt_mlp_expansion_factor": 2.0,
                         "use_rope": True}), **changes)
    torch.manual_seed(seed)
    layer = TTTLayer(DIM, HEADS, config)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return layer


@pytest.mark.parametrize("chunk", [1, 3, 4, 9])
def test_causal_form_streams_exactly_at_the_layer(chunk):
    layer = their_layer(minibatch_causal=True)
    x = torch.randn(2, 23, DIM)
    with torch.no_grad():
        parallel = layer(x)
        with layer.streaming(2):
            streamed = torch.cat([layer(piece) for piece in x.split(chunk, dim=1)], dim=1)
    torch.testing.assert_close(streamed, parallel, atol=1e-5, rtol=0)


def test_a_non_causal_layer_streams_its_causal_form():
    layer = their_layer()
    causal = their_layer(minibatch_causal=True)
    x = torch.randn(2, 10, DIM)
    with torch.no_grad():
        with layer.streaming(2):
            streamed = torch.cat([layer(piece) for piece in x.split(3, dim=1)], dim=1)
        torch.testing.assert_close(streamed, causal(x), atol=1e-5, rtol=0)
        assert (layer(x) - causal(x)).abs().max() > 1e-2


def test_gate_clamp():
    block = TTTBlock(DIM, HEADS, TTTConfig(gate_clamp=3.0))
    with torch.no_grad():
        block.gating_alpha.copy_(torch.linspace(-5, 5, DIM))
    torch.testing.assert_close(block.gate(), torch.tanh(torch.linspace(-5, 5, DIM).clamp(-3, 3)))


def test_scan_checkpoint_groups_recompute_and_keep_the_gradients(monkeypatch):
    """Grouped: every mini-batch is computed once in forward and again in backward; the gradients are the same."""
    x = torch.randn(2, 40, DIM)
    gradients, calls = {}, {}
    for group in (0, 3):
        layer = their_layer(seed=1, minibatch_causal=True, scan_checkpoint_group_size=group)
        count = [0]
        original = layer._segment

        def counted(*args, original=original, count=count, **kwargs):
            count[0] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(layer, "_segment", counted)
        layer(x).square().sum().backward()
        gradients[group] = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
        calls[group] = count[0]
    assert calls == {0: 10, 3: 20}
    assert gradients[0].keys() == gradients[3].keys() and len(gradients[0]) > 10
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[3][name], gradient, atol=1e-6, rtol=1e-5)

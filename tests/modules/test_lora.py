"""LoRA layers: forward math, wrapping, fusing and the released key layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moshi.modules.lora import LoRALinear, replace_all_linear_with_lora, replace_lora_with_linear


def _small_net(bias: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 10, bias=bias),
        nn.GELU(),
        nn.Sequential(nn.Linear(10, 4, bias=bias)),
        nn.LayerNorm(4),
    )


def _randomize_adapters(module: nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for layer in module.modules():
        if isinstance(layer, LoRALinear):
            with torch.no_grad():
                layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=generator))
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator))


def test_forward_is_base_plus_scaled_low_rank_update() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(5, 7, rank=3, scaling=1.5)
    _randomize_adapters(layer)
    x = torch.randn(2, 4, 5)
    w, a, b = layer.frozen_W.weight, layer.lora_A.weight, layer.lora_B.weight
    expected = x @ w.T + 1.5 * (x @ a.T @ b.T)
    torch.testing.assert_close(layer(x), expected)


def test_fresh_wrap_leaves_outputs_unchanged() -> None:
    net = _small_net()
    x = torch.randn(3, 6)
    before = net(x)
    replace_all_linear_with_lora(net, rank=2, scaling=2.0)
    torch.testing.assert_close(net(x), before)


def test_wrap_replaces_every_linear_and_keeps_key_layout() -> None:
    net = _small_net()
    base_weight = net[0].weight
    replace_all_linear_with_lora(net, rank=2, scaling=2.0)
    assert isinstance(net[0], LoRALinear) and isinstance(net[2][0], LoRALinear)
    assert net[0].frozen_W.weight is base_weight
    assert sorted(net.state_dict()) == sorted(
        [
            "0.frozen_W.weight", "0.lora_A.weight", "0.lora_B.weight",
            "2.0.frozen_W.weight", "2.0.lora_A.weight", "2.0.lora_B.weight",
            "3.weight", "3.bias",
        ]
    )  # fmt: skip
    assert net[0].lora_A.weight.shape == (2, 6) and net[0].lora_B.weight.shape == (10, 2)


def test_wrapping_twice_does_not_nest() -> None:
    net = _small_net()
    replace_all_linear_with_lora(net, rank=2, scaling=2.0)
    keys = sorted(net.state_dict())
    replace_all_linear_with_lora(net, rank=2, scaling=2.0)
    assert sorted(net.state_dict()) == keys


@pytest.mark.parametrize("bias", [False, True])
def test_fuse_gives_same_outputs_and_plain_linears(bias: bool) -> None:
    net = _small_net(bias)
    replace_all_linear_with_lora(net, rank=3, scaling=0.5)
    _randomize_adapters(net)
    x = torch.randn(4, 6)
    unfused = net(x)
    replace_lora_with_linear(net)
    assert not any(isinstance(m, LoRALinear) for m in net.modules())
    assert type(net[0]) is nn.Linear and (net[0].bias is not None) == bias
    torch.testing.assert_close(net(x), unfused, atol=1e-5, rtol=1e-5)


def test_base_checkpoint_loads_into_wrapped_model() -> None:
    source = _small_net(bias=True)
    target = _small_net(bias=True)
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    replace_all_linear_with_lora(target, rank=2, scaling=2.0)
    result = target.load_state_dict(source.state_dict(), strict=False)
    assert result.unexpected_keys == []
    expected = ["0.lora_A.weight", "0.lora_B.weight", "2.0.lora_A.weight", "2.0.lora_B.weight"]
    assert sorted(result.missing_keys) == expected
    x = torch.randn(3, 6)
    torch.testing.assert_close(target(x), source(x))


def test_adapters_follow_requested_device_and_dtype() -> None:
    net = _small_net()
    replace_all_linear_with_lora(net, rank=2, scaling=2.0, device="meta", dtype=torch.bfloat16)
    assert net[0].lora_A.weight.device.type == "meta" and net[0].lora_A.weight.dtype == torch.bfloat16
    assert net[0].frozen_W.weight.device.type == "cpu"


def test_rank_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(4, 4, rank=0, scaling=1.0)


def test_merge_weight_is_the_fused_weight_outside_autograd() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(5, 7, rank=3, scaling=1.5)
    _randomize_adapters(layer)
    merged = layer.merge_weight()
    expected = layer.frozen_W.weight + 1.5 * layer.lora_B.weight @ layer.lora_A.weight
    torch.testing.assert_close(merged, expected)
    assert not merged.requires_grad
    x = torch.randn(3, 5)
    torch.testing.assert_close(x @ merged.T, layer(x))


def test_a_state_dict_hook_can_save_the_merged_weight_as_a_plain_linear() -> None:
    """moshi-finetune's checkpointer writes merged weights through a state-dict hook keyed by the layer prefix."""
    net = _small_net()
    replace_all_linear_with_lora(net, rank=2, scaling=2.0)
    _randomize_adapters(net)

    def save_merged(module: nn.Module, destination: dict, prefix: str, *_: object) -> None:
        destination[prefix + "weight"] = module.merge_weight()

    for layer in net.modules():
        if isinstance(layer, LoRALinear):
            layer._register_state_dict_hook(save_merged)
    state = {key: value for key, value in net.state_dict().items() if "lora" not in key and "frozen" not in key}
    plain = _small_net()
    plain.load_state_dict(state)
    x = torch.randn(2, 6)
    torch.testing.assert_close(plain(x), net(x))

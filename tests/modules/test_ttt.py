"""TTT layer: parallel form vs an autograd reference, streaming in any chunking, closed-form inner gradient, per-item
reset / exec mask, parameter immutability, the gated block, dtypes and the configuration helpers."""

from __future__ import annotations

import copy

import pytest
import torch
from streaming_checks import assert_rollback_keeps_prefixes, assert_rollback_replays
from torch.nn import functional as F

from moshi.modules.ttt import (
    TTTBlock,
    TTTConfig,
    TTTLayer,
    gelu_tanh_derivative,
    inner_key_pass,
    parse_ttt_layers,
    weighted_gradient_sum,
)

DIM, HEADS, MINI_BATCH = 32, 4, 16
VARIANTS = ["linear", "mlp"]


def make_layer(variant: str, seed: int = 0) -> TTTLayer:
    """A small layer with weights large enough that the inner updates visibly change the outputs."""
    torch.manual_seed(seed)
    layer = TTTLayer(DIM, HEADS, TTTConfig(variant=variant, mini_batch_size=MINI_BATCH, base_lr=1.0))
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            scale = 0.3 if name.startswith(("W", "wq", "wk", "wv")) else 0.1
            parameter.add_(scale * torch.randn_like(parameter))
    return layer


def stream(module: torch.nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    with module.streaming(x.shape[0]):
        return torch.cat([module(piece) for piece in x.split(chunk, dim=1)], dim=1)


# ----- an independent reference: explicit per-token weights from torch.autograd ---------------------------------------


def reference_heads(layer: TTTLayer, x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    return (x @ linear.weight.T + linear.bias).unflatten(-1, (HEADS, -1)).transpose(1, 2)


def reference_head_norm(z: torch.Tensor, layer: TTTLayer) -> torch.Tensor:
    normed = F.layer_norm(z, (z.shape[-1],), eps=1e-6)
    return normed * layer.ttt_norm_weight[:, None, :] + layer.ttt_norm_bias[:, None, :]


def reference_inner(x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    z = x @ weights["W1"] + weights["b1"]
    if "W2" in weights:
        z = F.gelu(z, approximate="tanh") @ weights["W2"] + weights["b2"]
    return z


def reference_forward(layer: TTTLayer, x: torch.Tensor) -> torch.Tensor:
    """Mini-batch gradient descent written out token by token, gradients from torch.autograd."""
    B, T, _ = x.shape
    head_dim = DIM // HEADS
    q, k, v = (reference_heads(layer, x, lin) for lin in (layer.wq, layer.wk, layer.wv))
    eta = (layer.base_lr / head_dim) * torch.sigmoid(x @ layer.lr_gate.weight.T + layer.lr_gate.bias).transpose(1, 2)
    names = ["W1", "b1", "W2", "b2"] if layer.config.variant == "mlp" else ["W1", "b1"]
    start_weights = {n: getattr(layer, n).detach().expand(B, *getattr(layer, n).shape) for n in names}
    outputs = []
    for begin in range(0, T, MINI_BATCH):
        mb = slice(begin, min(begin + MINI_BATCH, T))
        w0 = {n: t.clone().requires_grad_(True) for n, t in start_weights.items()}
        kb, vb, qb, eb = k[:, :, mb], v[:, :, mb], q[:, :, mb], eta[:, :, mb]
        losses = 0.5 * (reference_head_norm(reference_inner(kb, w0), layer) - (vb - kb)).pow(2).sum(-1)
        for t in range(kb.shape[2]):
            total = (eb[:, :, : t + 1] * losses[:, :, : t + 1]).sum()
            grads = torch.autograd.grad(total, list(w0.values()), retain_graph=True)
            w_t = {n: w0[n].detach() - g / (t + 1) for n, g in zip(w0, grads, strict=True)}
            z = reference_inner(qb[:, :, t: t + 1], w_t)
            outputs.append(qb[:, :, t: t + 1] + reference_head_norm(z, layer))
        start_weights = w_t
    merged = torch.cat(outputs, dim=2).transpose(1, 2).flatten(2)
    normed = F.layer_norm(merged, (DIM,), layer.post_norm.weight, layer.post_norm.bias, eps=1e-6)
    return normed @ layer.wo.weight.T + layer.wo.bias


@pytest.mark.parametrize("variant", VARIANTS)
def test_parallel_form_matches_autograd_reference(variant: str) -> None:
    layer = make_layer(variant)
    x = torch.randn(2, 56, DIM)
    with torch.no_grad():
        ours = layer(x)
    expected = reference_forward(layer, x).detach()
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_streaming_any_chunking_matches_parallel(variant: str) -> None:
    layer = make_layer(variant)
    x = torch.randn(2, 56, DIM)  # 3.5 mini-batches
    with torch.no_grad():
        parallel = layer(x)
        frozen = copy.deepcopy(layer)
        frozen.base_lr = 0.0
        # the inner updates matter: without them the outputs are clearly different
        assert (frozen(x) - parallel).abs().max() > 100 * 1e-4
        for chunk in (1, 5, 16, 37):
            torch.testing.assert_close(stream(layer, x, chunk), parallel, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_closed_form_inner_gradient_matches_autograd(variant: str) -> None:
    torch.manual_seed(1)
    B, n, hd = 2, 16, DIM // HEADS
    hidden = 4 * hd if variant == "mlp" else hd
    shapes = {"W1": (B, HEADS, hd, hidden), "b1": (B, HEADS, 1, hidden)}
    if variant == "mlp":
        shapes.update(W2=(B, HEADS, hidden, hd), b2=(B, HEADS, 1, hd))
    weights = {name: (0.5 * torch.randn(shape)).requires_grad_(True) for name, shape in shapes.items()}
    keys, values = torch.randn(B, HEADS, n, hd), torch.randn(B, HEADS, n, hd)
    norm_weight, norm_bias = 1 + 0.2 * torch.randn(HEADS, hd), 0.2 * torch.randn(HEADS, hd)
    token_weights = torch.rand(B, HEADS, n)

    normed = F.layer_norm(reference_inner(keys, weights), (hd,), eps=1e-6)
    predicted = normed * norm_weight[:, None] + norm_bias[:, None]
    losses = 0.5 * (predicted - (values - keys)).pow(2).sum(-1)
    autograd = torch.autograd.grad((token_weights * losses).sum(), list(weights.values()))

    with torch.no_grad():
        closed = weighted_gradient_sum(inner_key_pass(keys, values, weights, norm_weight, norm_bias), token_weights)
    for name, expected in zip(weights, autograd, strict=True):
        torch.testing.assert_close(closed[name], expected, atol=1e-5, rtol=0)


def test_gelu_derivative_matches_autograd() -> None:
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(F.gelu(x, approximate="tanh").sum(), x)
    torch.testing.assert_close(gelu_tanh_derivative(x.detach()), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("chunk", [1, 7])
def test_reset_restores_only_the_masked_item(variant: str, chunk: int) -> None:
    layer = make_layer(variant)
    x, y = torch.randn(2, 30, DIM), torch.randn(2, 20, DIM)
    with torch.no_grad():
        uninterrupted = layer(torch.cat([x, y], dim=1))[:, 30:]
        fresh = layer(y)
        with layer.streaming(2):
            for piece in x.split(chunk, dim=1):
                layer(piece)
            layer.reset_streaming(torch.tensor([False, True]))
            state = layer.streaming_state
            for name, initial in layer.initial_fast_weights().items():
                assert torch.equal(state.weights[name][1], initial)
                assert not torch.equal(state.weights[name][0], initial)
            # item 0 sits mid mini-batch (position 30), item 1 at position 0
            after = torch.cat([layer(piece) for piece in y.split(chunk, dim=1)], dim=1)
    torch.testing.assert_close(after[0], uninterrupted[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(after[1], fresh[1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_exec_mask_keeps_masked_items_unchanged(variant: str) -> None:
    layer = make_layer(variant)
    a, b, c = torch.randn(2, 10, DIM), torch.randn(2, 9, DIM), torch.randn(2, 12, DIM)
    with torch.no_grad():
        item0 = layer(torch.cat([a, b, c], dim=1))[0, 19:]
        item1 = layer(torch.cat([a, c], dim=1))[1, 10:]
        with layer.streaming(2):
            layer(a)
            layer.set_exec_mask(torch.tensor([True, False]))
            state = layer.streaming_state
            frozen = [t[1].clone() for t in (*state.weights.values(), *state.pending.values(), state.offset)]
            for piece in b.split(4, dim=1):
                layer(piece)
            after = [t[1] for t in (*state.weights.values(), *state.pending.values(), state.offset)]
            assert all(torch.equal(x, y) for x, y in zip(frozen, after, strict=True))
            layer.set_exec_mask(torch.tensor([True, True]))
            out = torch.cat([layer(piece) for piece in c.split(5, dim=1)], dim=1)
    torch.testing.assert_close(out[0], item0, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], item1, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sessions_repeat_and_parameters_stay_bitwise_unchanged(variant: str) -> None:
    layer = make_layer(variant)
    before = {name: p.detach().clone() for name, p in layer.state_dict().items()}
    x = torch.randn(2, 200, DIM)
    with torch.no_grad():
        first = stream(layer, x, 1)
        second = stream(layer, x, 1)
    assert torch.equal(first, second)
    for name, value in layer.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("keep", [[0, 20], [3, 17], [16, 5], [20, 20]])
def test_rollback_keeps_each_items_prefix(variant: str, keep: list[int]) -> None:
    """From position 13, 20 speculative steps cross a mini-batch end; each item keeps its own prefix (before, at or
    after that end), its fast weights are rebuilt from the kept segments, and it streams on from its own position."""
    assert_rollback_keeps_prefixes(make_layer(variant), torch.randn(2, 70, DIM), split=13, span=20, keep=keep)


def test_rollback_keeping_steps_needs_a_span() -> None:
    layer = make_layer("linear")
    with torch.no_grad(), layer.streaming(2):
        checkpoint = layer.checkpoint_streaming()
        layer(torch.randn(2, 3, DIM))
        with pytest.raises(ValueError, match="span"):
            layer.rollback_streaming(checkpoint, torch.tensor([1, 2]))
        checkpoint = layer.checkpoint_streaming(2)
        layer(torch.randn(2, 3, DIM))
        with pytest.raises(ValueError, match="span"):
            layer.rollback_streaming(checkpoint, torch.tensor([1, 2]))


def test_snapshot_and_restore() -> None:
    layer = make_layer("mlp")
    assert_rollback_replays(layer, torch.randn(2, 21, DIM), split=9)


@pytest.mark.parametrize("variant", VARIANTS)
def test_block_is_a_gated_residual(variant: str) -> None:
    torch.manual_seed(0)
    block = TTTBlock(DIM, HEADS, TTTConfig(variant=variant))
    assert block.ttt_layer.base_lr == (1.0 if variant == "linear" else 0.1)
    assert torch.equal(block.gating_alpha, torch.full((DIM,), block.initial_gating_alpha))
    names = set(dict(block.named_parameters()))
    assert {"gating_alpha", "ttt_layer.W1", "ttt_layer.lr_gate.weight", "ttt_layer.post_norm.weight"} <= names
    with torch.no_grad():
        block.gating_alpha.normal_()
        x = torch.randn(2, 40, DIM)
        out = block(x)
        torch.testing.assert_close(out, x + torch.tanh(block.gating_alpha) * block.ttt_layer(x))
        torch.testing.assert_close(stream(block, x, 3), out, atol=1e-5, rtol=0)


def test_meta_device_and_bf16() -> None:
    meta = TTTBlock(DIM, HEADS, TTTConfig(variant="mlp"), device="meta")
    assert all(p.device.type == "meta" for p in meta.parameters())

    torch.manual_seed(0)
    block = TTTBlock(DIM, HEADS, TTTConfig(variant="mlp"))
    half = copy.deepcopy(block).to(torch.bfloat16)
    x = torch.randn(2, 24, DIM)
    with torch.no_grad():
        reference = block.ttt_layer(x)
        out = half.ttt_layer(x.bfloat16())
        assert out.dtype == torch.bfloat16
        scale = reference.abs().max()
        assert (out.float() - reference).abs().max() < 0.05 * scale
        with half.streaming(2):
            streamed = torch.cat([half.ttt_layer(p) for p in x.bfloat16().split(5, dim=1)], dim=1)
            assert all(w.dtype == torch.float32 for w in half.ttt_layer.streaming_state.weights.values())
        torch.testing.assert_close(streamed.float(), out.float(), atol=0.05 * scale.item(), rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_reaches_every_parameter(variant: str) -> None:
    block = TTTBlock(DIM, HEADS, TTTConfig(variant=variant))
    block(torch.randn(2, 20, DIM)).square().sum().backward()
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        TTTLayer(30, 4)
    with pytest.raises(ValueError, match="variant"):
        TTTLayer(32, 4, TTTConfig(variant="rnn"))
    with pytest.raises(ValueError, match="mini_batch_size"):
        TTTLayer(32, 4, TTTConfig(mini_batch_size=0))
    with pytest.raises(ValueError, match=r"\[B, T, 32\]"):
        TTTLayer(32, 4)(torch.randn(2, 5, 16))


def test_parse_ttt_layers() -> None:
    assert parse_ttt_layers("all", 6) == list(range(6))
    assert parse_ttt_layers("none", 6) == []
    assert parse_ttt_layers("middle", 32) == list(range(32 // 4, 3 * 32 // 4))
    assert parse_ttt_layers([5, 1], 6) == [1, 5]
    assert parse_ttt_layers("29,30, 31", 32) == [29, 30, 31]
    with pytest.raises(ValueError, match="out of range"):
        parse_ttt_layers("29,32", 32)
    with pytest.raises(ValueError, match="out of range"):
        parse_ttt_layers([-1], 32)
    with pytest.raises(ValueError, match="repeat"):
        parse_ttt_layers([3, 3], 32)
    with pytest.raises(ValueError, match="not understood"):
        parse_ttt_layers("some", 32)


def test_config_from_dict() -> None:
    config = TTTConfig.from_dict({"layers": "29,30,31", "variant": "mlp", "mini_batch_size": 8})
    assert config.layer_indices(32) == [29, 30, 31]
    assert TTTConfig.from_dict(config.to_dict()) == config
    blocks = config.build_blocks(DIM, HEADS, 32, device="meta")
    assert sorted(blocks) == [29, 30, 31]
    assert blocks[30].ttt_layer.config.variant == "mlp" and blocks[30].ttt_layer.mini_batch_size == 8
    with pytest.raises(ValueError, match="unknown TTT config key"):
        TTTConfig.from_dict({"layers": "all", "chunk": 4})
    with pytest.raises(ValueError, match="needs 'layers'"):
        TTTConfig.from_dict({"variant": "linear"})
    with pytest.raises(ValueError, match="variant"):
        TTTConfig.from_dict({"layers": "all", "variant": "gru"})

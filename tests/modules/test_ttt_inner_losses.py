"""The TTT inner-loss diagnostic (w0 / before / after by position bin): equal to a direct computation from the fast
weights (their updates taken with autograd), whatever the chunking, for the reference TTT and moshi-finetune configs;
`before` equals `w0` until the first update; rejected steps taken back by a rollback, a kept prefix kept; nothing
recorded when off."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn import functional as F

from moshi.modules.ttt import TTTConfig, TTTLayer, inner_loss_trackers
from moshi.modules.ttt_inner_losses import InnerLossBins

DIM, HEADS, BIN = 32, 4, 6


def finetune_config(section: dict) -> TTTConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TTTConfig.from_moshi_finetune(section)


CONFIGS = {
    "linear": TTTConfig(variant="linear", mini_batch_size=8, base_lr=1.0),
    "mlp": TTTConfig(variant="mlp", mini_batch_size=8),
    "finetune_mlp2_rope": finetune_config({"enable": True, "mini_batch_size": 8, "use_rope": True}),
    "finetune_mlp3": finetune_config({"enable": True, "mini_batch_size": 8, "ttt_mlp_layers": 3,
                                      "ttt_mlp_expansion_factor": 2.0}),
}


def make_layer(config: TTTConfig, seed: int = 0) -> TTTLayer:
    """Weights large enough that one inner update visibly changes the losses."""
    torch.manual_seed(seed)
    layer = TTTLayer(DIM, HEADS, config)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            scale = 0.3 if name.startswith(("W", "wq", "wk", "wv")) else 0.1
            parameter.add_(scale * torch.randn_like(parameter))
    return layer


def reconstruction_loss(layer: TTTLayer, k: torch.Tensor, v: torch.Tensor, weights: dict[str, torch.Tensor]
                        ) -> torch.Tensor:
    """`[B, H, n]`: 1/2 ||LN(g(k)) - (v - k)||^2 written out here (tanh-GELU MLP, per-head LayerNorm)."""
    x = k
    count = sum(1 for name in weights if name.startswith("W"))
    for index in range(1, count + 1):
        if index > 1:
            x = F.gelu(x, approximate="tanh")
        x = x @ weights[f"W{index}"] + weights[f"b{index}"]
    mean = x.mean(-1, keepdim=True)
    variance = (x - mean).square().mean(-1, keepdim=True)
    normed = (x - mean) / torch.sqrt(variance + layer.config.ln_eps)
    prediction = normed * layer.ttt_norm_weight.detach()[:, None] + layer.ttt_norm_bias.detach()[:, None]
    return 0.5 * (prediction - (v - k)).square().sum(-1)


def direct_losses(layer: TTTLayer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per position `[T]` (mean over heads and items; NaN for `after` in the last, partial mini-batch): the losses under
    the initial weights, the mini-batch's start weights, and those minus the eta-weighted autograd gradient sum / b."""
    B, T = x.shape[:2]
    b = layer.mini_batch_size
    with torch.no_grad():
        _, k, v, eta = layer._project(x, torch.zeros(B, dtype=torch.long))
    initial = {name: getattr(layer, name).detach().float().expand(B, *getattr(layer, name).shape).clone()
               for name in layer.fast_weight_shapes()}
    weights = initial
    result = {name: torch.full((T,), float("nan")) for name in ("w0", "before", "after")}
    for start in range(0, T, b):
        piece = slice(start, min(start + b, T))
        kb, vb = k[:, :, piece], v[:, :, piece]
        result["w0"][piece] = reconstruction_loss(layer, kb, vb, initial).mean((0, 1))
        result["before"][piece] = reconstruction_loss(layer, kb, vb, weights).mean((0, 1))
        if kb.shape[2] < b:
            break
        leaves = {name: tensor.clone().requires_grad_(True) for name, tensor in weights.items()}
        total = (eta[:, :, piece] * reconstruction_loss(layer, kb, vb, leaves)).sum()
        grads = torch.autograd.grad(total, list(leaves.values()))
        weights = {name: (leaves[name] - grad / b).detach() for name, grad in zip(leaves, grads)}
        with torch.no_grad():
            result["after"][piece] = reconstruction_loss(layer, kb, vb, weights).mean((0, 1))
    return result


def binned(values: torch.Tensor) -> list[float | None]:
    means = []
    for start in range(0, len(values), BIN):
        chunk = values[start: start + BIN]
        chunk = chunk[~chunk.isnan()]
        means.append(float(chunk.mean()) if len(chunk) else None)
    return means


def streamed_summary(layer: TTTLayer, x: torch.Tensor, chunk: int) -> dict:
    bins = InnerLossBins.zeros(BIN, x.shape[1], "cpu")
    layer.record_inner_losses(bins)
    try:
        with torch.no_grad(), layer.streaming(x.shape[0]):
            for piece in x.split(chunk, dim=1):
                layer(piece)
    finally:
        layer.record_inner_losses(None)
    return bins.summary()


def assert_close_lists(actual: list, expected: list, rel: float = 1e-5) -> None:
    assert [value is None for value in actual] == [value is None for value in expected]
    for a, e in zip(actual, expected):
        if e is not None:
            assert a == pytest.approx(e, rel=rel, abs=1e-7)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_equal_to_direct_computation_in_any_chunking(name: str) -> None:
    layer = make_layer(CONFIGS[name])
    T = 37  # four whole mini-batches of 8 and a partial one
    x = torch.randn(2, T, DIM)
    direct = direct_losses(layer, x)
    for chunk in (1, 5, 8, 37):
        summary = streamed_summary(layer, x, chunk)
        assert summary["position"] == list(range(0, T, BIN))
        assert summary["count"] == [2 * min(BIN, T - start) for start in range(0, T, BIN)]
        for kind in ("w0", "before", "after"):
            assert_close_lists(summary[kind], binned(direct[kind]))
    # The inner loop learns on these weights: after the update the tokens are rebuilt better than before it.
    assert (direct["after"][:32] < direct["before"][:32]).float().mean() > 0.8


def test_before_equals_w0_until_the_first_update() -> None:
    layer = make_layer(CONFIGS["mlp"])
    bins = InnerLossBins.zeros(1, 40, "cpu")
    layer.record_inner_losses(bins)
    with torch.no_grad(), layer.streaming(2):
        layer(torch.randn(2, 40, DIM))
    summary = bins.summary()
    assert summary["before"][:8] == summary["w0"][:8]
    assert all(before != w0 for before, w0 in zip(summary["before"][8:], summary["w0"][8:]))


def test_rollback_takes_back_the_recorded_losses() -> None:
    layer = make_layer(CONFIGS["linear"])
    x = torch.randn(2, 30, DIM)
    plain = streamed_summary(layer, x, 11)  # pieces of 11, 11 and 8 steps
    bins = InnerLossBins.zeros(BIN, 30, "cpu")
    layer.record_inner_losses(bins)
    with torch.no_grad(), layer.streaming(2):
        layer(x[:, :11])
        checkpoint = layer.checkpoint_streaming()
        layer(torch.randn(2, 13, DIM))  # steps that get rejected
        layer.rollback_streaming(checkpoint)
        layer(x[:, 11:22])
        layer(x[:, 22:])
    layer.record_inner_losses(None)
    assert bins.summary() == plain


def test_rollback_keeping_each_items_prefix_keeps_what_the_prefix_recorded() -> None:
    """A speculative window kept in part (7 steps by one item, 3 by the other, across a mini-batch end), then the
    items continuing from their own positions: the same losses as streaming the kept steps alone."""
    layer = make_layer(CONFIGS["mlp"])
    x = torch.randn(2, 30, DIM)
    plain = streamed_summary(layer, x, 30)
    bins = InnerLossBins.zeros(BIN, 30, "cpu")
    layer.record_inner_losses(bins)
    with torch.no_grad(), layer.streaming(2):
        layer(x[:, :5])
        checkpoint = layer.checkpoint_streaming(10)
        window = torch.randn(2, 10, DIM)
        window[0, :7], window[1, :3] = x[0, 5:12], x[1, 5:8]
        layer(window)
        layer.rollback_streaming(checkpoint, torch.tensor([7, 3]))
        layer(torch.stack([x[0, 12:30], x[1, 8:26]]))
        layer.set_exec_mask(torch.tensor([False, True]))
        layer(torch.stack([torch.randn(4, DIM), x[1, 26:30]]))
    layer.record_inner_losses(None)
    summary = bins.summary()
    assert summary["position"] == plain["position"] and summary["count"] == plain["count"]
    for kind in ("w0", "before", "after"):
        assert_close_lists(summary[kind], plain[kind])


def test_limit_and_exec_mask_leave_positions_out() -> None:
    """Positions from an item's limit on, and items that do not execute, add nothing; a mini-batch reaching past the
    limit has no `after`."""
    layer = make_layer(CONFIGS["linear"])
    x = torch.randn(2, 20, DIM)
    alone = streamed_summary(layer, x[:1, :12], 12)
    bins = InnerLossBins.zeros(BIN, 20, "cpu")
    layer.record_inner_losses(bins)
    with torch.no_grad(), layer.streaming(2):
        (tracker,) = inner_loss_trackers(layer)
        tracker.limit.copy_(torch.tensor([12, 0]))
        layer(x)
        layer.set_exec_mask(torch.tensor([True, False]))
        layer(x)
    layer.record_inner_losses(None)
    summary = bins.summary()
    assert summary["position"] == alone["position"] and summary["count"] == [6, 6]
    for kind in ("w0", "before", "after"):
        assert_close_lists(summary[kind], alone[kind], rel=1e-6)
    assert summary["after"][1] == alone["after"][1] and alone["after"][1] is not None  # positions 6, 7 closed at 8


def test_off_by_default_and_after_recording() -> None:
    layer = make_layer(CONFIGS["mlp"])
    with torch.no_grad(), layer.streaming(1):
        layer(torch.randn(1, 5, DIM))
        assert layer.streaming_state.inner_losses is None and inner_loss_trackers(layer) == []
    streamed_summary(layer, torch.randn(1, 5, DIM), 5)
    assert layer.inner_loss_bins is None

"""The inner model of a TTT layer and its closed-form training step, in fp32.

Per head the hidden state is an inner model `g`: a stack of linear maps `z W_l + b_l` with tanh-GELU between them (one
map for TTT-Linear). Its loss on token u is `l_u(W) = 1/2 ||LN(g(k_u; W)) - (v_u - k_u)||^2` with a per-head
LayerNorm. Everything here is written in closed form (no autograd), so the layer can run under `torch.no_grad()` and
stay differentiable for training at the same time.

Shapes: fast weights `W{l}` `[B, H, in, out]` (or `[H, in, out]`), `b{l}` `[B, H, 1, out]`; tokens `[B, H, n, hd]`;
per-token learning rates `[B, H, n]`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
from torch.nn import functional as F

NORM_EPS = 1e-6
TARGET_NORM_EPS = 1e-5
_GELU_SCALE = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715

FastWeights = dict[str, torch.Tensor]


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def gelu_tanh_derivative(x: torch.Tensor) -> torch.Tensor:
    """d/dx of the tanh approximation of GELU, `0.5 * x * (1 + tanh(s * (x + c * x^3)))`."""
    t = torch.tanh(_GELU_SCALE * (x + _GELU_CUBIC * x.pow(3)))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_SCALE * (1 + 3 * _GELU_CUBIC * x * x)


def _standardize(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(z - mean) / std` over the last dim, and `1 / std` (biased variance, eps inside the root)."""
    centered = z - z.mean(-1, keepdim=True)
    inv_std = torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps)
    return centered * inv_std, inv_std


def head_layer_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Per-head LayerNorm of `z` `[B, H, n, hd]` with `weight`, `bias` `[H, hd]`."""
    z_hat, _ = _standardize(z, eps)
    return z_hat * weight[:, None, :] + bias[:, None, :]


def head_layer_norm_l2_grad(
    z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = NORM_EPS
) -> torch.Tensor:
    """Gradient w.r.t. `z` `[B, H, n, hd]` of each token's `1/2 ||LN(z) - target||^2`, in closed form."""
    z_hat, inv_std = _standardize(z, eps)
    scale = weight[:, None, :]
    grad_hat = (z_hat * scale + bias[:, None, :] - target) * scale
    mean_grad = grad_hat.mean(-1, keepdim=True)
    mean_projection = (grad_hat * z_hat).mean(-1, keepdim=True)
    return inv_std * (grad_hat - mean_grad - z_hat * mean_projection)


def normalized_target(residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """moshi-finetune's reconstruction target: `residual` `[B, H, n, hd]` (the `v - k`) standardised with the
    unbiased std and `TARGET_NORM_EPS` added to the std (outside the root), then the per-head affine `[H, hd]`."""
    centered = residual - residual.mean(-1, keepdim=True)
    normed = centered / (residual.std(-1, keepdim=True) + TARGET_NORM_EPS)
    return weight[:, None, :] * normed + bias[:, None, :]


def minibatch_rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Rotation angles `[B, T, hd / 2]` of moshi-finetune's audio RoPE for `positions` `[B, T]` (already taken modulo
    the mini-batch size): pair i turns by `position * theta^(-2i / hd) * (0.5 + 1.5 * exp(-2i / (2 hd)))`."""
    pair = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    frequencies = 1.0 / (theta ** (pair / head_dim))
    frequencies = frequencies * (0.5 + 1.5 * torch.exp(-pair / (head_dim * 2)))
    return positions.to(torch.float32)[..., None] * frequencies


def rotate_adjacent_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs `(x[2i], x[2i + 1])` of `x` `[B, H, T, hd]` by `angles` `[B, T, hd / 2]` (complex product)."""
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def fast_layer_names(weights: Mapping[str, torch.Tensor]) -> list[tuple[str, str]]:
    """`[("W1", "b1"), ...]`: the inner model's layers in order."""
    count = sum(1 for name in weights if name.startswith("W"))
    return [(f"W{i}", f"b{i}") for i in range(1, count + 1)]


def inner_forward(x: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """`g(x)` before the inner LayerNorm, for `x` `[B, H, n, hd]` and fast weights `[B, H, ...]` (or `[H, ...]`)."""
    for index, (w, b) in enumerate(fast_layer_names(weights)):
        if index:
            x = gelu_tanh(x)
        x = x @ weights[w] + weights[b]
    return x


def inner_loss(
    keys: torch.Tensor,
    values: torch.Tensor,
    weights: Mapping[str, torch.Tensor],
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float = NORM_EPS,
) -> torch.Tensor:
    """Per-token reconstruction loss `1/2 ||LN(g(k)) - (v - k)||^2` `[B, H, n]`."""
    prediction = head_layer_norm(inner_forward(keys, weights), norm_weight, norm_bias, eps)
    return 0.5 * (prediction - (values - keys)).pow(2).sum(-1)


@dataclasses.dataclass
class KeyPass:
    """What the inner model saw on each key, and each token's loss gradient at the layer outputs.

    layer_inputs[l]: `[B, H, n, in_l]`; output_grads[l]: `[B, H, n, out_l]` (d l_u / d pre-activation of layer l).
    Then `grad_W_l l_u = layer_inputs[l][u]^T output_grads[l][u]`.
    """

    layer_inputs: list[torch.Tensor]
    output_grads: list[torch.Tensor]


def inner_key_pass(
    keys: torch.Tensor,
    values: torch.Tensor,
    weights: Mapping[str, torch.Tensor],
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float = NORM_EPS,
) -> KeyPass:
    """Forward the keys through `g` and back-propagate each token's inner loss analytically."""
    layers = fast_layer_names(weights)
    inputs: list[torch.Tensor] = []
    pre_activations: list[torch.Tensor] = []
    x = keys
    for index, (w, b) in enumerate(layers):
        if index:
            x = gelu_tanh(pre_activations[-1])
        inputs.append(x)
        pre_activations.append(x @ weights[w] + weights[b])
    grad = head_layer_norm_l2_grad(pre_activations[-1], values - keys, norm_weight, norm_bias, eps)
    grads = [grad]
    for index in range(len(layers) - 1, 0, -1):
        weight = weights[layers[index][0]]
        grad = (grad @ weight.transpose(-1, -2)) * gelu_tanh_derivative(pre_activations[index - 1])
        grads.insert(0, grad)
    return KeyPass(inputs, grads)


def weighted_gradient_sum(key_pass: KeyPass, token_weights: torch.Tensor) -> FastWeights:
    """`sum_u token_weights[u] * grad l_u` for every fast weight; `token_weights` `[B, H, n]`."""
    sums: FastWeights = {}
    for index, (inputs, grads) in enumerate(zip(key_pass.layer_inputs, key_pass.output_grads, strict=True), start=1):
        scaled = grads * token_weights[..., None]
        sums[f"W{index}"] = inputs.transpose(-1, -2) @ scaled
        sums[f"b{index}"] = scaled.sum(-2, keepdim=True)
    return sums


def dual_form_queries(
    queries: torch.Tensor,
    key_pass: KeyPass,
    eta: torch.Tensor,
    read_scale: torch.Tensor,
    weights: Mapping[str, torch.Tensor],
    pending: Mapping[str, torch.Tensor] | None,
    causal: bool = True,
) -> torch.Tensor:
    """`g(q_t; W_t)` before the LayerNorm for the `n` queries of one mini-batch segment `[B, H, n, hd]`.

    `W_t = W0 - read_scale[t] * (pending + sum_u eta[u] grad l_u(W0))`, the sum over the keys `u <= t` (`causal`) or
    over every key of the segment, expanded layer by layer as
    `x W_t + b_t = x W0 + b0 - read_scale[t] * (x P_W + P_b + sum_u eta[u] (x . in_u + 1) grad_u)`.
    eta: `[B, H, n]` per key; read_scale: `[B, 1, n, 1]` per query; pending: sums of earlier tokens of the mini-batch.
    """
    n = queries.shape[2]
    pair_eta = eta[:, :, None, :].expand(-1, -1, n, -1)
    if causal:
        pair_eta = torch.tril(pair_eta)
    x = queries
    for index, (w, b) in enumerate(fast_layer_names(weights)):
        if index:
            x = gelu_tanh(x)
        key_inputs, key_grads = key_pass.layer_inputs[index], key_pass.output_grads[index]
        correction = ((x @ key_inputs.transpose(-1, -2) + 1) * pair_eta) @ key_grads
        if pending is not None:
            correction = correction + x @ pending[w] + pending[b]
        x = x @ weights[w] + weights[b] - read_scale * correction
    return x

"""Test-time training (TTT): a sequence layer whose hidden state is a small model trained while the stream is read.

Per head, the hidden state is an inner model `g` (one linear map, or a two-layer tanh-GELU MLP) used as
`f(x) = x + LN(g(x))`. Every token is a training example for `f`: from its key `k_u` it should rebuild its value `v_u`,
so the inner loss is `l_u(W) = 1/2 ||LN(g(k_u; W)) - (v_u - k_u)||^2`. Tokens form mini-batches of `b` consecutive
positions, aligned to position 0 of the stream. Inside a mini-batch every gradient is taken at the weights `W0` the
mini-batch starts from, and the query of its `i`-th token (1-based) reads

    W_i = W0 - (1 / i) * sum_{u <= i} eta_u * grad l_u(W0),    eta_u = base_lr * sigmoid(x_u . w_h + c_h) / head_dim

The next mini-batch starts from `W_b`. The causal sum is computed in "dual form" (token-to-token products, no `W_i` is
materialised). When streaming, the gradient sum of the tokens already read in the open mini-batch is kept in the state,
so any chunking gives the same outputs as one pass over the whole sequence. `docs/ttt.md` has the details.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .streaming import State, StreamingContainer, StreamingModule

VARIANTS = ("linear", "mlp")
DEFAULT_BASE_LR = {"linear": 1.0, "mlp": 0.1}
NORM_EPS = 1e-6
_GELU_SCALE = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715

FastWeights = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------------
# Inner model math (fp32). Fast weights: `W{l}` `[B, H, in, out]`, `b{l}` `[B, H, 1, out]`; tokens `[B, H, n, hd]`.
# ---------------------------------------------------------------------------------------------------------------------


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def gelu_tanh_derivative(x: torch.Tensor) -> torch.Tensor:
    """d/dx of the tanh approximation of GELU, `0.5 * x * (1 + tanh(s * (x + c * x^3)))`."""
    t = torch.tanh(_GELU_SCALE * (x + _GELU_CUBIC * x.pow(3)))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_SCALE * (1 + 3 * _GELU_CUBIC * x * x)


def _standardize(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(z - mean) / std` over the last dim, and `1 / std` (biased variance, eps inside the root)."""
    centered = z - z.mean(-1, keepdim=True)
    inv_std = torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + NORM_EPS)
    return centered * inv_std, inv_std


def head_layer_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-head LayerNorm of `z` `[B, H, n, hd]` with `weight`, `bias` `[H, hd]`."""
    z_hat, _ = _standardize(z)
    return z_hat * weight[:, None, :] + bias[:, None, :]


def head_layer_norm_l2_grad(
    z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Gradient w.r.t. `z` `[B, H, n, hd]` of each token's `1/2 ||LN(z) - target||^2`, in closed form."""
    z_hat, inv_std = _standardize(z)
    scale = weight[:, None, :]
    grad_hat = (z_hat * scale + bias[:, None, :] - target) * scale
    mean_grad = grad_hat.mean(-1, keepdim=True)
    mean_projection = (grad_hat * z_hat).mean(-1, keepdim=True)
    return inv_std * (grad_hat - mean_grad - z_hat * mean_projection)


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
) -> torch.Tensor:
    """Per-token reconstruction loss `1/2 ||LN(g(k)) - (v - k)||^2` `[B, H, n]`."""
    prediction = head_layer_norm(inner_forward(keys, weights), norm_weight, norm_bias)
    return 0.5 * (prediction - (values - keys)).pow(2).sum(-1)


@dataclasses.dataclass
class KeyPass:
    """What the inner model saw on each key, and each token's loss gradient at the layer outputs.

    layer_inputs[l]: `[B, H, n, in_l]`; output_grads[l]: `[B, H, n, out_l]` (d l_u / d pre-activation of layer l);
    output: `g(k)` before the LayerNorm `[B, H, n, hd]`. Then `grad_W_l l_u = layer_inputs[l][u]^T output_grads[l][u]`.
    """

    layer_inputs: list[torch.Tensor]
    output_grads: list[torch.Tensor]
    output: torch.Tensor


def inner_key_pass(
    keys: torch.Tensor,
    values: torch.Tensor,
    weights: Mapping[str, torch.Tensor],
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
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
    grad = head_layer_norm_l2_grad(pre_activations[-1], values - keys, norm_weight, norm_bias)
    grads = [grad]
    for index in range(len(layers) - 1, 0, -1):
        weight = weights[layers[index][0]]
        grad = (grad @ weight.transpose(-1, -2)) * gelu_tanh_derivative(pre_activations[index - 1])
        grads.insert(0, grad)
    return KeyPass(inputs, grads, pre_activations[-1])


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
    inv_index: torch.Tensor,
    weights: Mapping[str, torch.Tensor],
    pending: Mapping[str, torch.Tensor] | None,
) -> torch.Tensor:
    """`g(q_t; W_t)` before the LayerNorm for the `n` queries of one mini-batch segment `[B, H, n, hd]`.

    `W_t = W0 - inv_index[t] * (pending + sum_{u <= t} eta[u] grad l_u(W0))`, expanded layer by layer as
    `x W_t + b_t = x W0 + b0 - inv_index[t] * (x P_W + P_b + sum_{u <= t} eta[u] (x . in_u + 1) grad_u)`.
    eta: `[B, H, n]` per key; inv_index: `[B, 1, n, 1]` per query; pending: sums of earlier tokens of the mini-batch.
    """
    n = queries.shape[2]
    causal_eta = torch.tril(eta[:, :, None, :].expand(-1, -1, n, -1))
    x = queries
    for index, (w, b) in enumerate(fast_layer_names(weights)):
        if index:
            x = gelu_tanh(x)
        key_inputs, key_grads = key_pass.layer_inputs[index], key_pass.output_grads[index]
        correction = ((x @ key_inputs.transpose(-1, -2) + 1) * causal_eta) @ key_grads
        if pending is not None:
            correction = correction + x @ pending[w] + pending[b]
        x = x @ weights[w] + weights[b] - inv_index * correction
    return x


def advance_fast_weights(
    weights: Mapping[str, torch.Tensor],
    pending: Mapping[str, torch.Tensor] | None,
    segment_sums: Mapping[str, torch.Tensor],
    completes: torch.Tensor,
    mini_batch_size: int,
) -> tuple[FastWeights, FastWeights]:
    """Fast weights and pending sums after a segment; items where `completes` `[B]` closed their mini-batch step.

    The differentiable counterpart of `TTTState.absorb`, used by the parallel (training) form.
    """
    new_weights: FastWeights = {}
    new_pending: FastWeights = {}
    for name, segment_sum in segment_sums.items():
        total = segment_sum if pending is None else pending[name] + segment_sum
        closed = completes.view(-1, *([1] * (total.dim() - 1)))
        new_weights[name] = torch.where(closed, weights[name] - total / mini_batch_size, weights[name])
        new_pending[name] = torch.where(closed, torch.zeros_like(total), total)
    return new_weights, new_pending


# ---------------------------------------------------------------------------------------------------------------------
# Streaming state and the layer.
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class InnerLossTrace:
    """Inner reconstruction loss of one segment, given to `TTTLayer.inner_loss_hook`.

    start: `[B]` absolute position of the segment's first token; num_tokens: its length (within one mini-batch);
    loss_before / loss_after: `[B, H]` mean per-token inner loss of the segment's tokens under the weights its
    mini-batch started from, and under the weights after its last token (the next mini-batch's once it closes).
    """

    start: torch.Tensor
    num_tokens: int
    loss_before: torch.Tensor
    loss_after: torch.Tensor


@dataclasses.dataclass
class TTTState(State):
    """Fast weights of every batch item, in fp32.

    weights: name -> `[B, H, ...]` the inner model at the start of each item's open mini-batch.
    pending: name -> `[B, H, ...]` eta-weighted gradient sum of the tokens already read in that mini-batch.
    offset: `[B]` tokens read since the start of the stream (or the item's last reset).
    initial_weights: returns the learned initial fast weights `[H, ...]` (read again at every reset).
    """

    initial_weights: Callable[[], FastWeights]
    weights: FastWeights = dataclasses.field(init=False)
    pending: FastWeights = dataclasses.field(init=False)
    offset: torch.Tensor = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        initial = self.initial_weights()
        self.weights = {
            name: value.to(self.device).unsqueeze(0).repeat(self.batch_size, *([1] * value.dim()))
            for name, value in initial.items()
        }
        self.pending = {name: torch.zeros_like(value) for name, value in self.weights.items()}
        self.offset = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)

    def reset(self, reset_mask: torch.Tensor) -> None:
        super().reset(reset_mask)
        initial = self.initial_weights()
        for name, tensor in self.weights.items():
            chosen = reset_mask.view(-1, *([1] * (tensor.dim() - 1)))
            tensor.copy_(torch.where(chosen, initial[name].to(tensor), tensor))
            self.pending[name].masked_fill_(chosen, 0.0)
        self.offset.masked_fill_(reset_mask, 0)

    @torch.no_grad()
    def absorb(self, segment_sums: Mapping[str, torch.Tensor], completes: torch.Tensor, mini_batch_size: int) -> None:
        """In place: add a segment's gradient sums to `pending`; executing items whose mini-batch `completes` `[B]`
        then step their weights by `pending / mini_batch_size` and clear `pending`.

        Non-executing items must come with zero sums (their eta is zeroed): adding zero keeps them bitwise unchanged.
        """
        closing = completes & self.exec_mask
        step, keep = closing.float() / mini_batch_size, ~closing
        for name, pending in self.pending.items():
            per_item = (-1,) + (1,) * (pending.dim() - 1)
            pending.add_(segment_sums[name])
            self.weights[name].sub_(pending * step.view(per_item))
            pending.mul_(keep.view(per_item))


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"TTT {name} must be a positive integer, got {value!r}")


class TTTLayer(StreamingModule[TTTState]):
    """TTT-Linear / TTT-MLP sequence layer on `[B, T, dim]`, configured by a `TTTConfig` (variant, mini-batch size,
    learning rate, MLP width).

    Parameters: `wq`, `wk`, `wv`, `wo` (linear with bias, dim -> dim), `lr_gate` (linear dim -> H: the per-head
    learning-rate gate), the learned initial fast weights `W1` `[H, hd, hd']`, `b1` `[H, 1, hd']` (+ `W2`
    `[H, hd', hd]`, `b2` `[H, 1, hd]` for the MLP, hd' = mlp_expansion * hd), the inner LayerNorm `ttt_norm_weight`,
    `ttt_norm_bias` `[H, hd]` and the output LayerNorm `post_norm`. Inference never writes to the parameters: fast
    weights live in the streaming state. `inner_loss_hook`, when set, receives an `InnerLossTrace` per segment.
    """

    def __init__(self, dim: int, num_heads: int, config: TTTConfig | None = None, device=None, dtype=None) -> None:
        super().__init__()
        _check_positive_int("dim", dim)
        _check_positive_int("num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"TTT dim {dim} is not divisible by num_heads {num_heads}")
        self.config = TTTConfig() if config is None else config
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.variant = self.config.variant
        self.mini_batch_size = self.config.mini_batch_size
        self.base_lr = self.config.learning_rate
        self.mlp_expansion = self.config.mlp_expansion
        self.inner_loss_hook: Callable[[InnerLossTrace], None] | None = None
        factory = {"device": device, "dtype": dtype}
        self.wq = nn.Linear(dim, dim, **factory)
        self.wk = nn.Linear(dim, dim, **factory)
        self.wv = nn.Linear(dim, dim, **factory)
        self.wo = nn.Linear(dim, dim, **factory)
        self.lr_gate = nn.Linear(dim, num_heads, **factory)
        for name, shape in self.fast_weight_shapes().items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self.ttt_norm_weight = nn.Parameter(torch.empty(num_heads, self.head_dim, **factory))
        self.ttt_norm_bias = nn.Parameter(torch.empty(num_heads, self.head_dim, **factory))
        self.post_norm = nn.LayerNorm(dim, eps=NORM_EPS, **factory)
        self.reset_parameters()

    def fast_weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes `[H, ...]` of the learned initial fast weights, by name."""
        H, hd = self.num_heads, self.head_dim
        if self.variant == "linear":
            return {"W1": (H, hd, hd), "b1": (H, 1, hd)}
        hidden = self.mlp_expansion * hd
        return {"W1": (H, hd, hidden), "b1": (H, 1, hidden), "W2": (H, hidden, hd), "b2": (H, 1, hd)}

    def reset_parameters(self) -> None:
        """Projections and initial weights ~ N(0, 0.02), biases 0, LayerNorms to identity."""
        for linear in (self.wq, self.wk, self.wv, self.wo, self.lr_gate):
            nn.init.normal_(linear.weight, mean=0.0, std=0.02)
            nn.init.zeros_(linear.bias)
        for name in self.fast_weight_shapes():
            parameter = getattr(self, name)
            if name.startswith("W"):
                nn.init.normal_(parameter, mean=0.0, std=0.02)
            else:
                nn.init.zeros_(parameter)
        nn.init.ones_(self.ttt_norm_weight)
        nn.init.zeros_(self.ttt_norm_bias)
        self.post_norm.reset_parameters()

    def initial_fast_weights(self) -> FastWeights:
        """The learned initial fast weights `[H, ...]`, detached, in fp32."""
        return {name: getattr(self, name).detach().float() for name in self.fast_weight_shapes()}

    def _init_streaming_state(self, batch_size: int) -> TTTState:
        return TTTState(batch_size, self.W1.device, initial_weights=self.initial_fast_weights)

    # -- projections ---------------------------------------------------------------------------------------------------

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values `[B, H, T, hd]` and learning rates eta `[B, H, T]`, all fp32."""
        x = x.to(self.wq.weight.dtype)

        def heads(projected: torch.Tensor) -> torch.Tensor:
            return projected.float().unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

        gate = F.linear(x.float(), self.lr_gate.weight.float(), self.lr_gate.bias.float())
        eta = (self.base_lr / self.head_dim) * torch.sigmoid(gate).transpose(1, 2)
        return heads(self.wq(x)), heads(self.wk(x)), heads(self.wv(x)), eta

    def _output(self, inner_out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`[B, H, T, hd]` fp32 -> post LayerNorm over dim -> `wo` -> `[B, T, dim]` in `dtype`."""
        merged = inner_out.transpose(1, 2).flatten(2)
        normed = F.layer_norm(
            merged, (self.dim,), self.post_norm.weight.float(), self.post_norm.bias.float(), self.post_norm.eps
        )
        return self.wo(normed.to(self.wo.weight.dtype)).to(dtype)

    # -- the inner loop ------------------------------------------------------------------------------------------------

    def _norm_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ttt_norm_weight.float(), self.ttt_norm_bias.float()

    def _segment(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        eta: torch.Tensor,
        weights: FastWeights,
        pending: FastWeights | None,
        start: torch.Tensor,
    ) -> tuple[torch.Tensor, FastWeights, torch.Tensor]:
        """Read `n` tokens that stay inside one mini-batch of every item; `start` `[B]` is each item's position.

        Returns the outputs `q + LN(g(q; W_t))` `[B, H, n, hd]`, the segment's eta-weighted gradient sums and which
        items `[B]` complete their mini-batch with it.
        """
        n = q.shape[2]
        first = start % self.mini_batch_size
        index = first[:, None] + torch.arange(1, n + 1, device=q.device)
        inv_index = index.to(q.dtype).reciprocal()[:, None, :, None]
        norm_weight, norm_bias = self._norm_params()
        key_pass = inner_key_pass(k, v, weights, norm_weight, norm_bias)
        inner_q = dual_form_queries(q, key_pass, eta, inv_index, weights, pending)
        out = q + head_layer_norm(inner_q, norm_weight, norm_bias)
        segment_sums = weighted_gradient_sum(key_pass, eta)
        if self.inner_loss_hook is not None:
            self._trace_inner_loss(k, v, key_pass, weights, pending, segment_sums, start, index[:, -1])
        return out, segment_sums, first + n == self.mini_batch_size

    @torch.no_grad()
    def _trace_inner_loss(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        key_pass: KeyPass,
        weights: FastWeights,
        pending: FastWeights | None,
        segment_sums: FastWeights,
        start: torch.Tensor,
        last_index: torch.Tensor,
    ) -> None:
        norm_weight, norm_bias = self._norm_params()
        prediction = head_layer_norm(key_pass.output, norm_weight, norm_bias)
        before = 0.5 * (prediction - (v - k)).pow(2).sum(-1).mean(-1)
        after_weights = {}
        for name, total in segment_sums.items():
            if pending is not None:
                total = total + pending[name]
            scale = last_index.to(total.dtype).view(-1, *([1] * (total.dim() - 1)))
            after_weights[name] = weights[name] - total / scale
        after = inner_loss(k, v, after_weights, norm_weight, norm_bias).mean(-1)
        hook = self.inner_loss_hook
        if hook is not None:
            hook(InnerLossTrace(start.clone(), k.shape[2], before, after))

    def _segment_bounds(self, length: int, phase: int | None) -> list[tuple[int, int]]:
        """`[begin, end)` pieces of a chunk: cut at mini-batch ends for items at `phase`, one token each when None."""
        if phase is None:
            return [(t, t + 1) for t in range(length)]
        bounds, begin = [], 0
        while begin < length:
            end = min(begin + self.mini_batch_size - (phase + begin) % self.mini_batch_size, length)
            bounds.append((begin, end))
            begin = end
        return bounds

    def _run_parallel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        """A whole sequence from position 0, differentiable w.r.t. every parameter."""
        B = q.shape[0]
        weights = {name: getattr(self, name).float().expand(B, *shape) for name, shape in
                   self.fast_weight_shapes().items()}
        pending: FastWeights | None = None
        outputs = []
        for begin, end in self._segment_bounds(q.shape[2], 0):
            piece = slice(begin, end)
            start = torch.full((B,), begin, dtype=torch.long, device=q.device)
            out, sums, completes = self._segment(
                q[:, :, piece], k[:, :, piece], v[:, :, piece], eta[:, :, piece], weights, pending, start
            )
            weights, pending = advance_fast_weights(weights, pending, sums, completes, self.mini_batch_size)
            outputs.append(out)
        return torch.cat(outputs, dim=2)

    def _common_phase(self, state: TTTState) -> int | None:
        """The position inside the mini-batch shared by all executing items, or None when they differ."""
        phases = (state.offset % self.mini_batch_size)[state.exec_mask].unique().tolist()
        if len(phases) > 1:
            return None
        return int(phases[0]) if phases else 0

    def _stream(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        """Continue each item's stream; items may sit anywhere in their mini-batch (one token at a time then)."""
        state = self.streaming_state
        T = q.shape[2]
        eta = eta * state.exec_mask[:, None, None]
        phase = None if T == 1 else self._common_phase(state)
        outputs = []
        for begin, end in self._segment_bounds(T, phase):
            piece = slice(begin, end)
            out, sums, completes = self._segment(
                q[:, :, piece], k[:, :, piece], v[:, :, piece], eta[:, :, piece], state.weights, state.pending,
                state.offset + begin,
            )
            state.absorb(sums, completes, self.mini_batch_size)
            outputs.append(out)
        state.offset.add_(state.exec_mask.long() * T)
        return torch.cat(outputs, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[B, T, dim]` -> `[B, T, dim]`; outside streaming the sequence starts at position 0."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"TTTLayer expects [B, T, {self.dim}], got {list(x.shape)}")
        q, k, v, eta = self._project(x)
        if x.shape[1] == 0:
            out = q
        elif self._streaming_state is not None:
            out = self._stream(q, k, v, eta)
        else:
            out = self._run_parallel(q, k, v, eta)
        return self._output(out, x.dtype)


class TTTBlock(StreamingContainer):
    """Gated residual TTT block: `x + tanh(gating_alpha) * ttt_layer(x)`, `gating_alpha` `[dim]`."""

    def __init__(self, dim: int, num_heads: int, config: TTTConfig | None = None, device=None, dtype=None) -> None:
        super().__init__()
        config = TTTConfig() if config is None else config
        self.initial_gating_alpha = config.initial_gating_alpha
        self.ttt_layer = TTTLayer(dim, num_heads, config, device=device, dtype=dtype)
        self.gating_alpha = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Resets the gate (the TTT layer has its own `reset_parameters`)."""
        nn.init.constant_(self.gating_alpha, self.initial_gating_alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[B, T, dim]` -> `[B, T, dim]`."""
        return x + torch.tanh(self.gating_alpha).to(x.dtype) * self.ttt_layer(x)


# ---------------------------------------------------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------------------------------------------------

_LAYER_SPEC_HELP = "'all', 'none', 'middle', a list of layer indices or a comma-separated string like '29,30,31'"


def parse_ttt_layers(spec: str | Sequence[int], num_layers: int) -> list[int]:
    """Sorted layer indices for the config key `layers`.

    "all" -> every layer, "none" -> no layer, "middle" -> `range(L // 4, 3 * L // 4)`, a list of ints or a comma string
    "29,30,31" -> those layers. Out-of-range or repeated indices raise a ValueError.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
        raise ValueError(f"num_layers must be a non-negative integer, got {num_layers!r}")
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "all":
            return list(range(num_layers))
        if key == "none":
            return []
        if key == "middle":
            return list(range(num_layers // 4, 3 * num_layers // 4))
        try:
            indices = [int(part) for part in key.split(",")]
        except ValueError:
            raise ValueError(f"TTT layers {spec!r} not understood; expected {_LAYER_SPEC_HELP}") from None
    elif isinstance(spec, Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        indices = list(spec)
    else:
        raise ValueError(f"TTT layers {spec!r} not understood; expected {_LAYER_SPEC_HELP}")
    for index in indices:
        if not 0 <= index < num_layers:
            raise ValueError(
                f"TTT layer index {index} is out of range for a model with {num_layers} layers "
                f"(valid: 0..{num_layers - 1})"
            )
    if len(set(indices)) != len(indices):
        raise ValueError(f"TTT layers {spec!r} repeat an index")
    return sorted(indices)


@dataclasses.dataclass
class TTTConfig:
    """Where and how to place TTT blocks in the main transformer, validated once here.

    `layers`: which layers get a block (see `parse_ttt_layers`); `base_lr` None: the variant's default
    (`DEFAULT_BASE_LR`); `num_heads` None: the model's head count; `mlp_expansion`: hidden width of TTT-MLP in head
    dims; `initial_gating_alpha`: the gate's initial value.
    """

    layers: str | list[int] = "middle"
    variant: str = "linear"
    mini_batch_size: int = 16
    base_lr: float | None = None
    num_heads: int | None = None
    initial_gating_alpha: float = 0.1
    mlp_expansion: int = 4

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown TTT variant {self.variant!r}; expected one of {VARIANTS}")
        _check_positive_int("mini_batch_size", self.mini_batch_size)
        _check_positive_int("mlp_expansion", self.mlp_expansion)
        if self.num_heads is not None:
            _check_positive_int("num_heads", self.num_heads)
        if self.base_lr is not None and not (isinstance(self.base_lr, (int, float)) and self.base_lr > 0):
            raise ValueError(f"TTT base_lr must be a positive number or None, got {self.base_lr!r}")
        if isinstance(self.layers, tuple):
            self.layers = list(self.layers)
        self.initial_gating_alpha = float(self.initial_gating_alpha)

    @property
    def learning_rate(self) -> float:
        """`base_lr`, or the variant's default when it is None."""
        return DEFAULT_BASE_LR[self.variant] if self.base_lr is None else float(self.base_lr)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TTTConfig:
        """Build from a config mapping; unknown keys and a missing `layers` raise a ValueError."""
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown TTT config key(s) {unknown}; expected a subset of {known}")
        if "layers" not in data:
            raise ValueError(f"TTT config needs 'layers' ({_LAYER_SPEC_HELP})")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def layer_indices(self, num_layers: int) -> list[int]:
        return parse_ttt_layers(self.layers, num_layers)

    def build_blocks(
        self, dim: int, model_num_heads: int, num_layers: int, device=None, dtype=None
    ) -> dict[int, TTTBlock]:
        """One `TTTBlock` per selected layer index (the `ttt_blocks` argument of `StreamingTransformer`)."""
        heads = self.num_heads if self.num_heads is not None else model_num_heads
        return {
            index: TTTBlock(dim, heads, self, device=device, dtype=dtype) for index in self.layer_indices(num_layers)
        }

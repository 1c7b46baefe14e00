"""Test-time training (TTT): a sequence layer whose hidden state is a small model trained while the stream is read.

Per head, the hidden state is an inner model `g` (one linear map, or a tanh-GELU MLP) used as `f(x) = x + LN(g(x))`.
Every token is a training example for `f`: from its key `k_u` it should rebuild its value `v_u`, so the inner loss is
`l_u(W) = 1/2 ||LN(g(k_u; W)) - (v_u - k_u)||^2`. Tokens form mini-batches of `b` consecutive positions, aligned to
position 0 of the stream. Inside a mini-batch every gradient is taken at the weights `W0` the mini-batch starts from,
and (reference TTT, ttt-lm-pytorch) the query of its `i`-th token (1-based) reads

    W_i = W0 - (1 / i) * sum_{u <= i} eta_u * grad l_u(W0),    eta_u = base_lr * sigmoid(x_u . w_h + c_h) / head_dim

The next mini-batch starts from `W_b`. The sum is computed in "dual form" (token-to-token products, no `W_i` is
materialised). When streaming, the gradient sum of the tokens already read in the open mini-batch is kept in the state,
so any chunking gives the same outputs as one pass over the whole sequence.

`TTTConfig` also describes the variant the TTT fork of moshi-finetune trains (`TTTConfig.from_moshi_finetune`): each
way it departs from the reference is one named field. `docs/ttt.md` has the details and the table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .streaming import State, StreamingContainer, StreamingModule, clone_state_value, copy_state_value_
from .ttt_finetune import FINETUNE_KEYS, finetune_section_settings
from .ttt_inner import (
    NORM_EPS,
    FastWeights,
    KeyPass,
    dual_form_queries,
    gelu_tanh,
    gelu_tanh_derivative,
    head_layer_norm,
    head_layer_norm_l2_grad,
    inner_forward,
    inner_key_pass,
    inner_loss,
    minibatch_rope_angles,
    normalized_target,
    rotate_adjacent_pairs,
    weighted_gradient_sum,
)
from .ttt_inner_losses import InnerLossBins, InnerLossTracker, SegmentLosses

VARIANTS = ("linear", "mlp")
DEFAULT_BASE_LR = {"linear": 1.0, "mlp": 0.1}
STEP_DIVISORS = ("position", "mini_batch")
CAUSAL_STREAMING_NOTE = (
    "this TTT config reads each mini-batch non-causally (minibatch_causal=False, as moshi-finetune trains), which "
    "cannot stream, so streaming computes its causal form (minibatch_causal=True: each frame reads the frames of its "
    "mini-batch up to itself, no padding)"
)


# ---------------------------------------------------------------------------------------------------------------------
# Streaming state and the layer.
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StreamedSegment:
    """What a segment streamed after a checkpoint added to the fast weights, kept so that a rollback can keep a prefix
    of the steps: the step of each item `[B]` its first column holds, counted from the checkpoint (columns outside an
    item's steps have a zero learning rate), the key pass and learning rates `[B, H, n]` of its `n` columns, their
    gradient sums, which items `[B]` it completed a mini-batch of, and its inner losses while they are recorded."""

    first_step: torch.Tensor
    key_pass: KeyPass
    eta: torch.Tensor
    sums: FastWeights
    completes: torch.Tensor
    losses: SegmentLosses | None

    def kept_columns(self, keep: torch.Tensor) -> torch.Tensor:
        """`[B, n]`: the columns holding one of the first `keep[b]` steps of each item (or a zero learning rate)."""
        return self.first_step[:, None] + torch.arange(self.eta.shape[2], device=keep.device) < keep[:, None]


@dataclasses.dataclass
class TTTCheckpoint:
    """A copy of the fast weights, their pending sums, offsets, exec mask and inner-loss recording, and the segments
    streamed since (None when the checkpoint has no span or more than `span` steps were taken)."""

    weights: FastWeights
    pending: FastWeights
    offset: torch.Tensor
    exec_mask: torch.Tensor
    inner_losses: InnerLossTracker | None
    segments: list[StreamedSegment] | None


@dataclasses.dataclass
class TTTState(State):
    """Fast weights of every batch item, in fp32.

    weights: name -> `[B, H, ...]` the inner model at the start of each item's open mini-batch.
    pending: name -> `[B, H, ...]` eta-weighted gradient sum of the tokens already read in that mini-batch.
    offset: `[B]` tokens read since the start of the stream (or the item's last reset).
    initial_weights: returns the learned initial fast weights `[H, ...]` (read again at every reset).
    mini_batch_size: tokens per mini-batch.
    inner_losses: the inner-loss recording while one is on (`TTTLayer.record_inner_losses`), else None. A checkpoint
    copies it with the rest, so a rollback also takes back the losses the undone steps added.
    segments, span, streamed: after `checkpoint(span)`, the segments streamed since (while at most `span` steps were),
    for a rollback that keeps a prefix of the steps.
    """

    initial_weights: Callable[[], FastWeights]
    mini_batch_size: int
    weights: FastWeights = dataclasses.field(init=False)
    pending: FastWeights = dataclasses.field(init=False)
    offset: torch.Tensor = dataclasses.field(init=False)
    inner_losses: InnerLossTracker | None = dataclasses.field(init=False, default=None)
    segments: list[StreamedSegment] | None = dataclasses.field(init=False, default=None)
    span: int = dataclasses.field(init=False, default=0)
    streamed: int = dataclasses.field(init=False, default=0)

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

    def checkpoint(self, span: int | None) -> TTTCheckpoint:
        """A copy of the state; with a `span`, the next `span` steps' segments are kept too (see `rollback`)."""
        self.segments = None if span is None else []
        self.span, self.streamed = span or 0, 0
        return TTTCheckpoint(clone_state_value(self.weights), clone_state_value(self.pending), self.offset.clone(),
                             self.exec_mask.clone(), clone_state_value(self.inner_losses), self.segments)

    def rollback(self, checkpoint: TTTCheckpoint, keep: torch.Tensor | None = None) -> None:
        """Back to the checkpoint; with `keep` `[B]`, then forward again through the first `keep[b]` steps of each
        item from the kept segments (their gradient sums, cut inside a segment by masking the learning rates): the
        fast weights of the kept prefix (and the inner losses it recorded), without running the layer again."""
        segments = checkpoint.segments
        if keep is not None and (segments is None or segments is not self.segments):
            raise ValueError("keeping part of the steps needs the last checkpoint, taken with a span no shorter than "
                             "the steps taken since")
        for name in self.weights:
            self.weights[name].copy_(checkpoint.weights[name])
            self.pending[name].copy_(checkpoint.pending[name])
        self.offset.copy_(checkpoint.offset)
        self.exec_mask.copy_(checkpoint.exec_mask)
        if self.inner_losses is not None:
            copy_state_value_(self.inner_losses, checkpoint.inner_losses)
        self.segments = None
        if keep is None:
            return
        kept_columns = [segment.kept_columns(keep) for segment in segments]
        flags = [(kept.any(), kept.all()) for kept in kept_columns]
        flags = torch.stack([torch.stack(pair) for pair in flags]).tolist() if flags else []  # one host read
        for segment, kept, (any_kept, all_kept) in zip(segments, kept_columns, flags, strict=True):
            if not any_kept:
                break
            whole = kept.all(dim=1)
            sums = segment.sums if all_kept else weighted_gradient_sum(segment.key_pass, segment.eta * kept[:, None, :])
            self.absorb(sums, segment.completes & whole)
            if segment.losses is not None:
                self.inner_losses.read(segment.losses, kept)
                self.inner_losses.close(segment.losses, whole)
        self.offset.add_(keep * self.exec_mask)

    def note_segment(self, first_step: torch.Tensor, key_pass: KeyPass, eta: torch.Tensor, sums: FastWeights,
                     completes: torch.Tensor, losses: SegmentLosses | None) -> None:
        """Keep a segment whose first column holds step `first_step[b]` `[B]` of the current call, while a
        checkpoint's span is open."""
        if self.segments is not None:
            self.segments.append(StreamedSegment(first_step + self.streamed, key_pass, eta, sums, completes, losses))

    def note_streamed(self, steps: int) -> None:
        """Count a call's `steps`; past the checkpoint's span its segments are dropped (no partial rollback then)."""
        if self.segments is None:
            return
        self.streamed += steps
        if self.streamed > self.span:
            self.segments = None

    @torch.no_grad()
    def absorb(self, segment_sums: Mapping[str, torch.Tensor], completes: torch.Tensor) -> None:
        """In place: add a segment's gradient sums to `pending`; executing items whose mini-batch `completes` `[B]`
        then step their weights by `pending / mini_batch_size` and clear `pending`.

        Non-executing items must come with zero sums (their eta is zeroed): adding zero keeps them bitwise unchanged.
        """
        closing = completes & self.exec_mask
        step, keep = closing.float() / self.mini_batch_size, ~closing
        for name, pending in self.pending.items():
            per_item = (-1,) + (1,) * (pending.dim() - 1)
            pending.add_(segment_sums[name])
            self.weights[name].sub_(pending * step.view(per_item))
            pending.mul_(keep.view(per_item))


@dataclasses.dataclass
class MiniBatch:
    """One mini-batch of a parallel pass: its first position and its queries, keys, values `[B, H, n, hd]` and
    learning rates `[B, H, n]`."""

    start: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    eta: torch.Tensor


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"TTT {name} must be a positive integer, got {value!r}")


def _check_positive_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"TTT {name} must be a positive number, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if type(value) is not bool:
        raise ValueError(f"TTT {name} must be true or false, got {value!r}")


class TTTLayer(StreamingModule[TTTState]):
    """TTT-Linear / TTT-MLP sequence layer on `[B, T, dim]`, configured by a `TTTConfig`.

    Parameters: `wq`, `wk`, `wv`, `wo` (linear with bias, dim -> dim), `lr_gate` (linear dim -> H: the per-head
    learning-rate gate), the learned initial fast weights `W{l}` `[H, d_{l-1}, d_l]`, `b{l}` `[H, 1, d_l]` with
    `d = config.inner_dims(head_dim)` (`[hd, hd]` for TTT-Linear, `[hd, e * hd, hd]` for the default TTT-MLP), the
    inner LayerNorm `ttt_norm_weight`, `ttt_norm_bias` `[H, hd]` and the output LayerNorm `post_norm`. Inference never
    writes to the parameters: fast weights live in the streaming state. Streaming always computes the causal form of
    the mini-batch (see `TTTConfig.minibatch_causal`). `record_inner_losses(bins)` makes the next streams add their
    inner losses to `bins` (`moshi.modules.ttt_inner_losses`).
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
        if self.config.rope and self.head_dim % 2:
            raise ValueError(f"TTT rope needs an even head dim, got {self.head_dim} (dim {dim} / {num_heads} heads)")
        self.inner_dims = self.config.inner_dims(self.head_dim)
        self.mini_batch_size = self.config.mini_batch_size
        self.base_lr = self.config.learning_rate
        self.inner_loss_bins: InnerLossBins | None = None
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
        """Shapes `[H, ...]` of the learned initial fast weights, by name (`W1`, `b1`, `W2`, ...)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for index, (fan_in, fan_out) in enumerate(zip(self.inner_dims[:-1], self.inner_dims[1:]), start=1):
            shapes[f"W{index}"] = (self.num_heads, fan_in, fan_out)
            shapes[f"b{index}"] = (self.num_heads, 1, fan_out)
        return shapes

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

    def record_inner_losses(self, bins: InnerLossBins | None) -> None:
        """Streams started from now on add their inner losses to `bins` (None: streams record nothing, at no cost)."""
        self.inner_loss_bins = bins

    def _init_streaming_state(self, batch_size: int) -> TTTState:
        state = TTTState(batch_size, self.W1.device, initial_weights=self.initial_fast_weights,
                         mini_batch_size=self.mini_batch_size)
        if self.inner_loss_bins is not None:
            state.inner_losses = InnerLossTracker.start(self.inner_loss_bins, batch_size, self.num_heads,
                                                        self.mini_batch_size, self.head_dim)
        return state

    # -- projections ---------------------------------------------------------------------------------------------------

    def _project(
        self, x: torch.Tensor, start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values `[B, H, T, hd]` and learning rates eta `[B, H, T]`, all fp32, for `x` `[B, T, dim]`
        whose first token sits at stream position `start` `[B]` (the RoPE phase)."""
        config = self.config
        x = x.to(self.wq.weight.dtype)

        def heads(projected: torch.Tensor) -> torch.Tensor:
            return projected.float().unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

        gate = F.linear(x.float(), self.lr_gate.weight.float(), self.lr_gate.bias.float())
        eta = (self.base_lr / self.head_dim) * torch.sigmoid(gate).transpose(1, 2)
        q, k, v = heads(self.wq(x)), heads(self.wk(x)), heads(self.wv(x))
        if config.qk_l2_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if config.rope:
            positions = (start[:, None] + torch.arange(x.shape[1], device=x.device)) % self.mini_batch_size
            angles = minibatch_rope_angles(positions, self.head_dim, config.rope_theta)
            q, k = rotate_adjacent_pairs(q, angles), rotate_adjacent_pairs(k, angles)
        if config.target_norm:
            norm_weight, norm_bias = self._norm_params()
            v = k + normalized_target(v - k, norm_weight, norm_bias)
        return q, k, v, eta

    def _output(self, inner_out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`[B, H, T, hd]` fp32 -> heads concatenated -> (post LayerNorm over dim -> `wo`) -> `[B, T, dim]` in
        `dtype`."""
        merged = inner_out.transpose(1, 2).flatten(2)
        if not self.config.output_projection:
            return merged.to(dtype)
        normed = F.layer_norm(
            merged, (self.dim,), self.post_norm.weight.float(), self.post_norm.bias.float(), self.post_norm.eps
        )
        return self.wo(normed.to(self.wo.weight.dtype)).to(dtype)

    # -- the inner loop ------------------------------------------------------------------------------------------------

    def _norm_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ttt_norm_weight.float(), self.ttt_norm_bias.float()

    def _step_sizes(self, index: torch.Tensor) -> torch.Tensor:
        """`[B, n]`: the factor of the gradient sum that token `index` (1-based within its mini-batch) reads."""
        if self.config.inner_step_divisor == "position":
            return index.to(torch.float32).reciprocal()
        return torch.full(index.shape, 1.0 / self.mini_batch_size, device=index.device)

    def _segment(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        eta: torch.Tensor,
        weights: FastWeights,
        pending: FastWeights | None,
        start: torch.Tensor,
        causal: bool,
    ) -> tuple[torch.Tensor, FastWeights, torch.Tensor, KeyPass]:
        """Read `n` tokens that stay inside one mini-batch of every item; `start` `[B]` is each item's position.

        Returns the outputs `q + LN(g(q; W_t))` `[B, H, n, hd]`, the segment's eta-weighted gradient sums, which
        items `[B]` complete their mini-batch with it, and the key pass the sums came from. Not `causal`: every query
        reads the whole segment.
        """
        n = q.shape[2]
        eps = self.config.ln_eps
        first = start % self.mini_batch_size
        index = first[:, None] + torch.arange(1, n + 1, device=q.device)
        steps = self._step_sizes(index)
        read_scale = (self.config.query_update_count * steps)[:, None, :, None]
        norm_weight, norm_bias = self._norm_params()
        key_pass = inner_key_pass(k, v, weights, norm_weight, norm_bias, eps)
        inner_q = dual_form_queries(q, key_pass, eta, read_scale, weights, pending, causal)
        out = q + head_layer_norm(inner_q, norm_weight, norm_bias, eps)
        return out, weighted_gradient_sum(key_pass, eta), first + n == self.mini_batch_size, key_pass

    @torch.no_grad()
    def _read_losses(self, state: TTTState, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor,
                     stored: torch.Tensor) -> SegmentLosses:
        """The `w0` and `before` losses of a segment's tokens (keys and values `[B, H, n, hd]`, the first at `start`
        `[B]`, `stored` `[B, n]` those that are steps of an executing item)."""
        positions = start[:, None] + torch.arange(k.shape[2], device=k.device)
        norm_weight, norm_bias = self._norm_params()
        w0, before = (inner_loss(k, v, weights, norm_weight, norm_bias, self.config.ln_eps).mean(1)
                      for weights in (self.initial_fast_weights(), state.weights))
        return SegmentLosses(positions, stored, w0, before, k, v)

    @torch.no_grad()
    def _closing_losses(self, tracker: InnerLossTracker, state: TTTState, end: torch.Tensor,
                        completes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The `after` losses `[B, b]` of the mini-batch that each item in `completes` `[B]` closed at `end` `[B]`
        (their positions `[B, b]`), under the weights it stepped to, and the items `[B]` that count: a mini-batch
        reaching past the item's limit does not."""
        b = self.mini_batch_size
        positions = end[:, None] - b + torch.arange(b, device=end.device)
        closed = completes & state.exec_mask & (end <= tracker.limit)
        norm_weight, norm_bias = self._norm_params()
        losses = inner_loss(tracker.keys, tracker.values, state.weights, norm_weight, norm_bias, self.config.ln_eps)
        return positions, losses.mean(1), closed

    def _segment_bounds(self, length: int, phase: int) -> list[tuple[int, int]]:
        """`[begin, end)` pieces of a chunk, cut at the mini-batch ends of items starting it at `phase`."""
        ends = [*range(self.mini_batch_size - phase, length, self.mini_batch_size), length]
        return list(zip([0, *ends[:-1]], ends))

    def _scan(self, pieces: list[MiniBatch], weights: FastWeights, causal: bool) -> tuple[torch.Tensor, FastWeights]:
        """Consecutive whole mini-batches of one parallel pass (the last one may be partial), from `weights`: the
        outputs `[B, H, n, hd]` and the fast weights the next mini-batch starts from."""
        outputs = []
        for piece in pieces:
            start = torch.full((piece.q.shape[0],), piece.start, dtype=torch.long, device=piece.q.device)
            out, sums, _, _ = self._segment(piece.q, piece.k, piece.v, piece.eta, weights, None, start, causal)
            if piece.q.shape[2] == self.mini_batch_size:
                weights = {name: weights[name] - total / self.mini_batch_size for name, total in sums.items()}
            outputs.append(out)
        return torch.cat(outputs, dim=2), weights

    def _run_parallel(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor, causal: bool
    ) -> torch.Tensor:
        """A whole sequence from position 0, differentiable w.r.t. every parameter.

        With gradients on, groups of `config.scan_checkpoint_group_size` mini-batches are checkpointed: backward keeps
        the fast weights at group boundaries only and recomputes the inside of a group.
        """
        B, T = q.shape[0], q.shape[2]
        weights = {name: getattr(self, name).float().expand(B, *shape) for name, shape in
                   self.fast_weight_shapes().items()}
        bounds = self._segment_bounds(T, 0)
        sizes = [end - begin for begin, end in bounds]
        pieces = [MiniBatch(begin, *parts) for (begin, _), *parts in
                  zip(bounds, *(tensor.split(sizes, dim=2) for tensor in (q, k, v, eta)), strict=True)]
        group = self.config.scan_checkpoint_group_size
        grouped = group > 0 and torch.is_grad_enabled()
        group = group if grouped else len(pieces)
        outputs = []
        for first in range(0, len(pieces), group):
            members = pieces[first: first + group]
            if grouped:
                out, weights = checkpoint(self._scan, members, weights, causal, use_reentrant=False)
            else:
                out, weights = self._scan(members, weights, causal)
            outputs.append(out)
        return torch.cat(outputs, dim=2)

    def _alignment(self, state: TTTState, length: int) -> tuple[int, int, torch.Tensor]:
        """How a chunk of `length` steps is laid out so that every item's mini-batch ends fall on the same columns:
        the smallest position inside the mini-batch among the executing items, the largest shift, and how many
        columns `[B]` each item's steps shift right (its own position minus the smallest). Read on the host (once)
        only for chunks longer than one step (a captured CUDA graph replays one-step calls)."""
        if length == 1:
            return 0, 0, torch.zeros_like(state.offset)
        phase = state.offset % self.mini_batch_size
        executing = state.exec_mask
        lowest, highest = torch.stack([torch.where(executing, phase, self.mini_batch_size).min(),
                                       torch.where(executing, phase, -1).max()]).tolist()
        if highest < 0:  # no item executes
            lowest = highest = 0
        return lowest, highest - lowest, torch.where(executing, phase - lowest, 0)

    def _parallel(self, x: torch.Tensor) -> torch.Tensor:
        """The parallel form from position 0: `x` `[B, T, dim]` -> `[B, H, T, hd]`; the non-causal form first pads
        to whole mini-batches when the config says so."""
        T = x.shape[1]
        causal = self.config.minibatch_causal
        if not causal and self.config.pad_to_minibatch and T % self.mini_batch_size:
            x = F.pad(x, (0, 0, 0, self.mini_batch_size - T % self.mini_batch_size))
        q, k, v, eta = self._project(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        return self._run_parallel(q, k, v, eta, causal)[:, :, :T]

    def _stream(self, x: torch.Tensor) -> torch.Tensor:
        """Continue each item's stream (causal form). Items sitting at different positions inside their mini-batch
        are aligned first: each item's steps shift right by `_alignment`'s columns, the columns around them having a
        zero learning rate (they add nothing and their outputs are dropped), so one cut at the mini-batch ends serves
        every item."""
        state = self.streaming_state
        T = x.shape[1]
        q, k, v, eta = self._project(x, state.offset)
        eta = eta * state.exec_mask[:, None, None]
        phase, spread, shift = self._alignment(state, T)
        width = T + spread
        steps = torch.arange(width, device=x.device) - shift[:, None]
        inside = (steps >= 0) & (steps < T)
        if width > T:
            q, k, v, eta = (self._columns(tensor, steps.clamp(0, T - 1)) for tensor in (q, k, v, eta))
            eta = eta * inside[:, None, :]
        start = state.offset - shift
        tracker = state.inner_losses
        outputs = []
        for begin, end in self._segment_bounds(width, phase):
            piece = slice(begin, end)
            losses = None
            if tracker is not None:
                stored = inside[:, piece] & state.exec_mask[:, None]
                losses = self._read_losses(state, k[:, :, piece], v[:, :, piece], start + begin, stored)
                tracker.read(losses)
            out, sums, completes, key_pass = self._segment(
                q[:, :, piece], k[:, :, piece], v[:, :, piece], eta[:, :, piece], state.weights, state.pending,
                start + begin, causal=True,
            )
            completes = completes & inside[:, end - 1]
            state.absorb(sums, completes)
            if losses is not None and (T == 1 or (phase + end) % self.mini_batch_size == 0):
                losses.after = self._closing_losses(tracker, state, start + end, completes)
                tracker.close(losses)
            state.note_segment(steps[:, begin], key_pass, eta[:, :, piece], sums, completes, losses)
            outputs.append(out)
        out = torch.cat(outputs, dim=2)
        if width > T:
            out = self._columns(out, shift[:, None] + torch.arange(T, device=x.device))
        state.offset.add_(state.exec_mask.long() * T)
        state.note_streamed(T)
        return out

    @staticmethod
    def _columns(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """`tensor[b, :, index[b, j]]` for `[B, H, T, ...]` tensors and an index `[B, n]`."""
        trailing = tensor.shape[3:]
        full = index[:, None].view(*index.shape[:1], 1, index.shape[1], *([1] * len(trailing)))
        return tensor.gather(2, full.expand(tensor.shape[0], tensor.shape[1], index.shape[1], *trailing))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[B, T, dim]` -> `[B, T, dim]`; outside streaming the sequence starts at position 0."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"TTTLayer expects [B, T, {self.dim}], got {list(x.shape)}")
        if x.shape[1] == 0:
            out = x.new_zeros(x.shape[0], self.num_heads, 0, self.head_dim, dtype=torch.float32)
        elif self._streaming_state is not None:
            out = self._stream(x)
        else:
            out = self._parallel(x)
        return self._output(out, x.dtype)


class TTTBlock(StreamingContainer):
    """Gated residual TTT block: `x + tanh(gating_alpha) * ttt_layer(x)`, `gating_alpha` `[dim]` (clamped to
    `[-gate_clamp, gate_clamp]` before the tanh when the config has a `gate_clamp`)."""

    def __init__(self, dim: int, num_heads: int, config: TTTConfig | None = None, device=None, dtype=None) -> None:
        super().__init__()
        config = TTTConfig() if config is None else config
        self.initial_gating_alpha = config.initial_gating_alpha
        self.gate_clamp = config.gate_clamp
        self.ttt_layer = TTTLayer(dim, num_heads, config, device=device, dtype=dtype)
        self.gating_alpha = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Resets the gate (the TTT layer has its own `reset_parameters`)."""
        nn.init.constant_(self.gating_alpha, self.initial_gating_alpha)

    def gate(self) -> torch.Tensor:
        """`tanh(gating_alpha)` `[dim]`, after the clamp when configured."""
        alpha = self.gating_alpha
        if self.gate_clamp is not None:
            alpha = alpha.clamp(-self.gate_clamp, self.gate_clamp)
        return torch.tanh(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[B, T, dim]` -> `[B, T, dim]`."""
        return x + self.gate().to(x.dtype) * self.ttt_layer(x)


def ttt_layers_by_index(transformer_layers: Iterable[nn.Module]) -> dict[int, TTTLayer]:
    """The TTT layer of each transformer layer that has a TTT block, by the layer's index."""
    return {index: layer.ttt.ttt_layer for index, layer in enumerate(transformer_layers)
            if isinstance(getattr(layer, "ttt", None), TTTBlock)}


@contextlib.contextmanager
def recording_inner_losses(transformer_layers: Iterable[nn.Module], bin_size: int,
                           num_positions: int) -> Iterator[dict[int, InnerLossBins]]:
    """Inside the block, streams started on these layers (`lm.transformer.layers`) add the inner losses of their first
    `num_positions` positions to the yielded bins, by layer index (see `moshi.modules.ttt_inner_losses`)."""
    layers = ttt_layers_by_index(transformer_layers)
    bins = {index: InnerLossBins.zeros(bin_size, num_positions, layer.W1.device) for index, layer in layers.items()}
    for index, layer in layers.items():
        layer.record_inner_losses(bins[index])
    try:
        yield bins
    finally:
        for layer in layers.values():
            layer.record_inner_losses(None)


def inner_loss_trackers(module: nn.Module) -> list[InnerLossTracker]:
    """The inner-loss recordings of the streaming TTT layers under `module` (empty when none records)."""
    return [layer.streaming_state.inner_losses for layer in module.modules()
            if isinstance(layer, TTTLayer) and layer.is_streaming and layer.streaming_state.inner_losses is not None]


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

    Placement and size: `layers` (see `parse_ttt_layers`); `variant` (`linear` / `mlp`); `mini_batch_size` (b);
    `base_lr` (None: the variant's default, `DEFAULT_BASE_LR`); `num_heads` (None: the model's); `initial_gating_alpha`;
    `mlp_layers` (depth of the inner MLP, >= 2); `mlp_expansion` (hidden width `int(head_dim * mlp_expansion)`, an int
    or a float); `mlp_hidden_dims` (explicit hidden widths, `mlp_layers - 1` of them, overriding the expansion).

    How it computes; the defaults are the reference TTT (ttt-lm-pytorch), and `from_moshi_finetune` sets each field to
    what moshi-finetune's layer does:
    - `output_projection`: apply `post_norm` and `wo` to the concatenated heads (theirs: False, the heads are the
      output).
    - `qk_l2_norm`: L2-normalise each head of q and k after the projections (theirs: True).
    - `rope`, `rope_theta`: rotate q and k by their audio RoPE at position `t mod b` (after the L2 norm).
    - `target_norm`: reconstruct `ttt_norm(v - k)` (unbiased std, eps 1e-5 outside the root) instead of `v - k`.
    - `ln_eps`: eps of the inner LayerNorm (theirs: 1e-8).
    - `minibatch_causal`: token i reads only the tokens <= i of its mini-batch (False: the whole mini-batch, later
      tokens included; that form cannot stream, and streaming computes the causal one).
    - `inner_step_divisor`: token i reads the gradient sum divided by its position i (`position`) or by b
      (`mini_batch`; the weights carried to the next mini-batch are divided by b either way).
    - `pad_to_minibatch`: the non-causal parallel form zero-pads the input to whole mini-batches, the padding taking
      part in the last update (the causal form never pads: padding after the last token changes no output).
    - `query_update_count`: how many times the queries read the mini-batch's update (theirs, 3+ inner layers: 2).
    - `gate_clamp`: clamp `gating_alpha` to `[-c, c]` before the tanh (theirs: 3).
    - `ttt_layer_context`, `other_layer_context`: attention context of the layers with / without a TTT block (None:
      the model's).
    Training: `scan_checkpoint_group_size` checkpoints the mini-batch scan in groups of that many mini-batches (0: off).
    """

    layers: str | list[int] = "middle"
    variant: str = "linear"
    mini_batch_size: int = 16
    base_lr: float | None = None
    num_heads: int | None = None
    initial_gating_alpha: float = 0.1
    mlp_layers: int = 2
    mlp_expansion: float = 4
    mlp_hidden_dims: list[int] | None = None
    output_projection: bool = True
    qk_l2_norm: bool = False
    rope: bool = False
    rope_theta: float = 10000.0
    target_norm: bool = False
    ln_eps: float = NORM_EPS
    minibatch_causal: bool = True
    inner_step_divisor: str = "position"
    pad_to_minibatch: bool = False
    query_update_count: int = 1
    gate_clamp: float | None = None
    ttt_layer_context: int | None = None
    other_layer_context: int | None = None
    scan_checkpoint_group_size: int = 16

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown TTT variant {self.variant!r}; expected one of {VARIANTS}")
        _check_positive_int("mini_batch_size", self.mini_batch_size)
        _check_positive_number("mlp_expansion", self.mlp_expansion)
        if self.num_heads is not None:
            _check_positive_int("num_heads", self.num_heads)
        if self.base_lr is not None:
            _check_positive_number("base_lr", self.base_lr)
        if isinstance(self.layers, tuple):
            self.layers = list(self.layers)
        self.initial_gating_alpha = float(self.initial_gating_alpha)
        self._check_mlp_shape()
        for name in ("output_projection", "qk_l2_norm", "rope", "target_norm", "minibatch_causal", "pad_to_minibatch"):
            _check_bool(name, getattr(self, name))
        _check_positive_number("rope_theta", self.rope_theta)
        _check_positive_number("ln_eps", self.ln_eps)
        if self.inner_step_divisor not in STEP_DIVISORS:
            raise ValueError(f"TTT inner_step_divisor must be one of {STEP_DIVISORS}, got {self.inner_step_divisor!r}")
        if not self.minibatch_causal and self.inner_step_divisor == "position":
            raise ValueError("TTT minibatch_causal=False reads the whole mini-batch, which has no per-position "
                             "divisor: set inner_step_divisor='mini_batch'")
        _check_positive_int("query_update_count", self.query_update_count)
        if self.gate_clamp is not None:
            _check_positive_number("gate_clamp", self.gate_clamp)
        for name in ("ttt_layer_context", "other_layer_context"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        group = self.scan_checkpoint_group_size
        if isinstance(group, bool) or not isinstance(group, int) or group < 0:
            raise ValueError(f"TTT scan_checkpoint_group_size must be a non-negative integer, got {group!r}")

    def _check_mlp_shape(self) -> None:
        _check_positive_int("mlp_layers", self.mlp_layers)
        if self.mlp_layers < 2:
            raise ValueError(f"TTT mlp_layers must be at least 2 (a TTT-MLP has a hidden layer), got {self.mlp_layers}")
        if self.mlp_hidden_dims is None:
            return
        if isinstance(self.mlp_hidden_dims, tuple):
            self.mlp_hidden_dims = list(self.mlp_hidden_dims)
        if not isinstance(self.mlp_hidden_dims, list) or len(self.mlp_hidden_dims) != self.mlp_layers - 1:
            raise ValueError(f"TTT mlp_hidden_dims must list mlp_layers - 1 = {self.mlp_layers - 1} widths, "
                             f"got {self.mlp_hidden_dims!r}")
        for width in self.mlp_hidden_dims:
            _check_positive_int("mlp_hidden_dims entry", width)

    @property
    def learning_rate(self) -> float:
        """`base_lr`, or the variant's default when it is None."""
        return DEFAULT_BASE_LR[self.variant] if self.base_lr is None else float(self.base_lr)

    def inner_dims(self, head_dim: int) -> list[int]:
        """Widths `[hd, ..., hd]` of the inner model's layers: `[hd, hd]` for TTT-Linear, `[hd, h, ..., h, hd]` for
        TTT-MLP (`mlp_layers` maps, `h = int(head_dim * mlp_expansion)` unless `mlp_hidden_dims` gives them)."""
        if self.variant == "linear":
            return [head_dim, head_dim]
        hidden = self.mlp_hidden_dims or [int(head_dim * self.mlp_expansion)] * (self.mlp_layers - 1)
        if min(hidden) < 1:
            raise ValueError(f"TTT-MLP hidden width int({head_dim} * {self.mlp_expansion}) is zero")
        return [head_dim, *hidden, head_dim]

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

    @classmethod
    def from_moshi_finetune(cls, section: Mapping[str, Any]) -> TTTConfig:
        """The config computing what the TTT fork of moshi-finetune computed in training, from the `ttt:` section of its
        training YAML, verbatim (keys of its `TTTArgs`, its defaults for missing ones).

        Keys that only steer training are accepted and named in one UserWarning; unknown keys raise a ValueError.
        """
        if not isinstance(section, Mapping):
            raise TypeError(f"a moshi-finetune `ttt:` section must be a mapping, got {type(section).__name__}")
        settings, note = finetune_section_settings(section)
        config = cls(**settings)
        if note is not None:
            warnings.warn(note, UserWarning, stacklevel=2)
        return config

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> TTTConfig:
        """A `ttt` config section in either format, told apart by its keys: ours (`from_dict`), or a moshi-finetune
        `ttt:` section (`from_moshi_finetune`) when it has a key only theirs has (`enable`, `ttt_mlp_layers`, ...)."""
        if not isinstance(section, Mapping):
            raise TypeError(f"a TTT config section must be a mapping, got {type(section).__name__}")
        ours = {field.name for field in dataclasses.fields(cls)}
        keys = set(section)
        if keys <= ours or not keys & (FINETUNE_KEYS - ours):
            return cls.from_dict(section)
        return cls.from_moshi_finetune(section)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def layer_indices(self, num_layers: int) -> list[int]:
        return parse_ttt_layers(self.layers, num_layers)

    def attention_contexts(self, num_layers: int) -> dict[int, int]:
        """Attention context by layer index for the layers whose context this config changes."""
        with_ttt = set(self.layer_indices(num_layers))
        contexts = {}
        for index in range(num_layers):
            context = self.ttt_layer_context if index in with_ttt else self.other_layer_context
            if context is not None:
                contexts[index] = context
        return contexts

    def warn_if_streamed_non_causal(self) -> None:
        """One UserWarning when this config's mini-batch is non-causal: streaming computes the causal form."""
        if not self.minibatch_causal:
            warnings.warn(CAUSAL_STREAMING_NOTE, UserWarning, stacklevel=3)

    def build_blocks(
        self, dim: int, model_num_heads: int, num_layers: int, device=None, dtype=None
    ) -> dict[int, TTTBlock]:
        """One `TTTBlock` per selected layer index (the `ttt_blocks` argument of `StreamingTransformer`)."""
        heads = self.num_heads if self.num_heads is not None else model_num_heads
        return {
            index: TTTBlock(dim, heads, self, device=device, dtype=dtype) for index in self.layer_indices(num_layers)
        }


__all__ = [
    "DEFAULT_BASE_LR",
    "TTTBlock",
    "TTTConfig",
    "TTTLayer",
    "TTTState",
    "dual_form_queries",
    "gelu_tanh",
    "gelu_tanh_derivative",
    "head_layer_norm",
    "head_layer_norm_l2_grad",
    "inner_forward",
    "inner_key_pass",
    "inner_loss",
    "inner_loss_trackers",
    "parse_ttt_layers",
    "recording_inner_losses",
    "ttt_layers_by_index",
    "weighted_gradient_sum",
]

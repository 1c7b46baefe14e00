"""The streaming transformer used by Moshi's main model, its depformer and Mimi.

A `StreamingTransformer` is a stack of pre-norm layers (self-attention, optional test-time-training block,
feed-forward). Outside streaming it runs a whole sequence `[B, T, C]` from position 0. Inside `streaming(B)` each call
continues the sequence: the attention layers keep a ring KV cache that stores, next to every key and value, its absolute
position. Masks are built from those positions, so a chunk of any length is exact, also after the cache has wrapped past
the attention context, and every batch item can sit at its own position (per-item resets and exec masks).

The attention context of each layer is changed in one place, outside streaming (the KV cache is sized by it):
`StreamingTransformer.set_attention_contexts` (per layer, e.g. a TTT config's contexts), `bounded_attention_context`
(a block in which no layer looks further back than a given number of steps) and `set_attention_context` (every
attention layer of a model, upstream's function).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .gating import ActivationGating
from .norms import LayerScale, make_norm
from .rope import RotaryEmbedding
from .streaming import State, StreamingContainer, StreamingModule, module_device

POSITIONAL_EMBEDDINGS = ("sin", "rope", "sin_rope", "none")


def sin_embedding(positions: torch.Tensor, dim: int, max_period: float, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoidal embedding `[B, T, dim]` of integer `positions` `[B, T]`: cosines then sines."""
    half = dim // 2
    exponents = torch.arange(half, device=positions.device, dtype=torch.float32) / (half - 1)
    phase = positions.to(torch.float32)[..., None] / (max_period**exponents)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1).to(dtype)


def weight_index(step: int, schedule: Sequence[int] | None) -> int:
    """Which of the per-step weight sets serves time step `step`."""
    return step if schedule is None else schedule[step]


def apply_per_step(modules: nn.ModuleList, x: torch.Tensor, first_step: int, schedule: Sequence[int] | None):
    """Apply `modules[t]` to time step t of `x` `[B, T, C]`, t counted from `first_step` (one module: all steps)."""
    if len(modules) == 1:
        return modules[0](x)
    outputs = [
        modules[weight_index(first_step + t, schedule)](x[:, t: t + 1]) for t in range(x.shape[1])
    ]
    return torch.cat(outputs, dim=1)


def num_weight_sets(weights_per_step: int, schedule: Sequence[int] | None) -> int:
    """How many distinct weight sets a per-step module holds (1 when weights are shared by all steps)."""
    if not weights_per_step:
        return 1
    if schedule is not None:
        if len(schedule) != weights_per_step:
            raise ValueError(f"weights_per_step_schedule has {len(schedule)} entries, expected {weights_per_step}")
        return max(schedule) + 1
    return weights_per_step


@dataclasses.dataclass
class AttentionCheckpoint:
    """The cache slots `[B, n]` the next `n` positions of each item overwrite, their keys and values, the position
    table, and the `span` asked for (None: any number of steps)."""

    slots: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    exec_mask: torch.Tensor
    filled: int
    span: int | None


@dataclasses.dataclass
class AttentionState(State):
    """Ring KV cache of one attention layer.

    keys, values: `[B, H, capacity, D]`; positions: `[B, capacity]` absolute position of each slot, -1 when empty.
    Slots are filled in order, so only the first `filled` slots can hold anything and reads skip the rest. On a CUDA
    device `filled` starts at `capacity`: every step then reads the same shapes, as a recorded CUDA graph needs.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    filled: int = 0

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    def reset(self, reset_mask: torch.Tensor) -> None:
        super().reset(reset_mask)
        self.positions.masked_fill_(reset_mask[:, None], -1)
        if self.device.type != "cuda" and bool(reset_mask.all()):
            self.filled = 0  # a fresh stream reads exactly what a new one would (on CUDA the whole ring, always)

    def checkpoint(self, span: int | None) -> AttentionCheckpoint:
        """Keep only the slots the next `span` positions will overwrite (all of them when None), plus the small
        position table."""
        kept = self.capacity if span is None else min(span, self.capacity)
        next_position = self.positions.max(dim=1).values + 1
        slots = (next_position[:, None] + torch.arange(kept, device=self.positions.device))
        slots = slots % self.capacity
        index = slots[:, None, :, None].expand(-1, self.keys.shape[1], -1, self.keys.shape[3])
        return AttentionCheckpoint(slots, self.keys.gather(2, index), self.values.gather(2, index),
                                   self.positions.clone(), self.exec_mask.clone(), self.filled, span)

    def rollback(self, checkpoint: AttentionCheckpoint, keep: torch.Tensor | None = None) -> None:
        """Restore the slots written since the checkpoint; with `keep` `[B]`, only those of positions after each item's
        first `keep[b]` (the kept entries stay: truncating the cache costs no recomputation).

        Keeping needs every kept entry still in the ring: at most `capacity` steps since the checkpoint (`filled` stays
        an upper bound).
        """
        restored = None
        if keep is not None:
            if checkpoint.span is None or checkpoint.span > self.capacity:
                raise ValueError(f"keeping part of the steps needs a checkpoint span of at most the cache's "
                                 f"{self.capacity} steps, got {checkpoint.span}")
            restored = torch.arange(checkpoint.slots.shape[1], device=keep.device) >= keep[:, None]
        self._restore(checkpoint.slots, checkpoint.keys, checkpoint.values, restored)
        if restored is None:
            self.positions.copy_(checkpoint.positions)
            self.filled = checkpoint.filled
        else:
            saved_positions = checkpoint.positions.gather(1, checkpoint.slots)
            live_positions = self.positions.gather(1, checkpoint.slots)
            self.positions.scatter_(1, checkpoint.slots, torch.where(restored, saved_positions, live_positions))
        self.exec_mask.copy_(checkpoint.exec_mask)

    def _restore(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 restored: torch.Tensor | None) -> None:
        """Write the saved `keys`, `values` `[B, H, n, D]` back into `slots` `[B, n]` (where `restored` `[B, n]`)."""
        index = slots[:, None, :, None].expand_as(keys)
        if restored is not None:
            where = restored[:, None, :, None]
            keys = torch.where(where, keys, self.keys.gather(2, index))
            values = torch.where(where, values, self.values.gather(2, index))
        self.keys.scatter_(2, index, keys)
        self.values.scatter_(2, index, values)

    def write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Store the last `capacity` of the new entries `[B, H, T, D]` at slot `position % capacity` (items outside the
        exec mask keep theirs; on a CPU, when every item executes, nothing old is read)."""
        self.filled = min(self.capacity, self.filled + k.shape[2])
        if k.shape[2] > self.capacity:
            k, v, positions = k[:, :, -self.capacity:], v[:, :, -self.capacity:], positions[:, -self.capacity:]
        slots = positions % self.capacity
        index = slots[:, None, :, None].expand_as(k)
        if self.device.type != "cuda" and bool(self.exec_mask.all()):  # a CUDA graph replays one form: the masked one
            self.positions.scatter_(1, slots, positions)
            self.keys.scatter_(2, index, k)
            self.values.scatter_(2, index, v)
            return
        keep = ~self.exec_mask[:, None]
        new_positions = torch.where(keep, self.positions.gather(1, slots), positions)
        self.positions.scatter_(1, slots, new_positions)
        keep_kv = keep[:, :, None, None]
        self.keys.scatter_(2, index, torch.where(keep_kv, self.keys.gather(2, index), k))
        self.values.scatter_(2, index, torch.where(keep_kv, self.values.gather(2, index), v))


class StreamingMultiheadAttention(StreamingModule[AttentionState]):
    """Multi-head self-attention with RoPE, a sliding causal `context` and a ring KV cache when streaming.

    With `weights_per_step` > 0 (the depformer), time step t uses its own input and output projections.
    Released checkpoints store the projections stacked (`in_proj_weight`, `out_proj.weight`); they are split on load.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        causal: bool = False,
        context: int | None = None,
        rope: RotaryEmbedding | None = None,
        weights_per_step: int = 0,
        weights_per_step_schedule: Sequence[int] | None = None,
        kv_repeat: int = 1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if num_heads % kv_repeat:
            raise ValueError(f"num_heads {num_heads} is not divisible by kv_repeat {kv_repeat}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.causal = causal
        self.context = context
        self.rope = rope
        self.weights_per_step = weights_per_step
        self.weights_per_step_schedule = weights_per_step_schedule
        self.kv_repeat = kv_repeat
        self.head_dim = embed_dim // num_heads
        kv_dim = self.head_dim * (num_heads // kv_repeat)
        self.num_weight_sets = num_weight_sets(weights_per_step, weights_per_step_schedule)
        self.in_projs = nn.ModuleList(
            nn.Linear(embed_dim, embed_dim + 2 * kv_dim, bias=False, device=device, dtype=dtype)
            for _ in range(self.num_weight_sets)
        )
        self.out_projs = nn.ModuleList(
            nn.Linear(embed_dim, embed_dim, bias=False, device=device, dtype=dtype)
            for _ in range(self.num_weight_sets)
        )
        self._register_load_state_dict_pre_hook(self._split_stacked_projections)

    def _split_stacked_projections(self, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any) -> None:
        """Turn released checkpoints' stacked `in_proj_weight` / `out_proj.weight` into per-step tensors."""
        renames = {
            "in_proj_weight": "in_projs.{}.weight",
            "in_proj.weight": "in_projs.{}.weight",
            "out_proj.weight": "out_projs.{}.weight",
        }
        for lora_part in ("lora_A", "lora_B"):
            renames[f"in_proj.{lora_part}.weight"] = "in_projs.{}." + lora_part + ".weight"
            renames[f"out_proj.{lora_part}.weight"] = "out_projs.{}." + lora_part + ".weight"
        for stacked_name, split_name in renames.items():
            stacked = state_dict.pop(prefix + stacked_name, None)
            if stacked is None:
                continue
            for i, part in enumerate(stacked.unflatten(0, (self.num_weight_sets, -1)).unbind(0)):
                state_dict[prefix + split_name.format(i)] = part

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads // self.kv_repeat

    def cache_capacity(self) -> int:
        if self.context is not None:
            return self.context
        if self.weights_per_step:
            return self.weights_per_step
        raise ValueError("a streaming attention needs a finite `context` (or weights_per_step) to size its KV cache")

    def _init_streaming_state(self, batch_size: int) -> AttentionState:
        weight = next(self.parameters())
        capacity = self.cache_capacity()
        shape = (batch_size, self.num_kv_heads, capacity, self.head_dim)
        return AttentionState(
            batch_size,
            weight.device,
            keys=torch.zeros(shape, device=weight.device, dtype=weight.dtype),
            values=torch.zeros(shape, device=weight.device, dtype=weight.dtype),
            positions=torch.full((batch_size, capacity), -1, device=weight.device, dtype=torch.long),
            filled=capacity if weight.device.type == "cuda" else 0,
        )

    def _project_qkv(self, x: torch.Tensor, first_step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries `[B, H, T, D]`, keys and values `[B, H_kv, T, D]`."""
        projected = apply_per_step(self.in_projs, x, first_step, self.weights_per_step_schedule)
        kv_dim = self.head_dim * self.num_kv_heads
        q, k, v = projected.split([self.embed_dim, kv_dim, kv_dim], dim=-1)
        return (
            q.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2),
            k.unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2),
            v.unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2),
        )

    def _visible(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor | None:
        """Boolean mask `[B, 1, Tq, Tk]`: which keys each query may attend to."""
        if not self.causal:
            return (key_positions >= 0)[:, None, None, :]
        delta = query_positions[:, :, None] - key_positions[:, None, :]
        visible = (key_positions[:, None, :] >= 0) & (delta >= 0)
        if self.context is not None:
            visible &= delta < self.context
        return visible[:, None]

    def _keys_and_values(
        self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values and key positions to attend over; updates the cache when streaming.

        When writing the chunk cannot evict anything a query still sees (the chunk is short enough, or the cache still
        has room for it: slots are filled in order), it is written first and the cache alone is attended over;
        otherwise the cache is read before the write and joined with the chunk.
        """
        state = self._streaming_state
        if state is None:
            return k, v, positions
        window = self.context if self.context is not None else state.capacity
        if k.shape[2] + window - 1 <= state.capacity or state.filled + k.shape[2] <= state.capacity:
            state.write(k, v, positions)
            return self._cached(state)
        cached_keys, cached_values, cached_positions = self._cached(state)
        keys = torch.cat([cached_keys, k], dim=2)
        values = torch.cat([cached_values, v], dim=2)
        key_positions = torch.cat([cached_positions, positions], dim=1)
        state.write(k, v, positions)
        return keys, values, key_positions

    @staticmethod
    def _cached(state: AttentionState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cache slots worth reading: the filled ones."""
        return state.keys[:, :, :state.filled], state.values[:, :, :state.filled], state.positions[:, :state.filled]

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, first_step: int = 0) -> torch.Tensor:
        """Attend `x` `[B, T, C]` whose first time step sits at position `offsets` `[B]`; returns `[B, T, C]`."""
        T = x.shape[1]
        positions = offsets[:, None] + torch.arange(T, device=x.device)
        q, k, v = self._project_qkv(x, first_step)
        if self.rope is not None:
            q, k = self.rope(q, k, positions)
        keys, values, key_positions = self._keys_and_values(k, v, positions)
        mask = self._visible(positions, key_positions)
        if self._streaming_state is not None:
            mask = mask | ~self._streaming_state.exec_mask[:, None, None, None]
        if self.kv_repeat > 1:
            keys = keys.repeat_interleave(self.kv_repeat, dim=1)
            values = values.repeat_interleave(self.kv_repeat, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        out = out.transpose(1, 2).flatten(2)
        return apply_per_step(self.out_projs, out, first_step, self.weights_per_step_schedule)


class StreamingTransformerLayer(nn.Module):
    """Pre-norm layer: `x += attn(norm1(x))`, optional `x = ttt(x)`, then `x += ffn(norm2(x))`.

    The feed-forward is gated (`gating` = `silu`, `gelu`, ...) or plain (`gating="none"`, keys `linear1`/`linear2`).
    With `weights_per_step` the gated FFN has one weight set per time step, like the attention.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        dim_feedforward: int | list[int] = 2048,
        causal: bool = False,
        context: int | None = None,
        rope: RotaryEmbedding | None = None,
        norm: str = "layer_norm",
        layer_scale: float | None = None,
        gating: str = "none",
        weights_per_step: int = 0,
        weights_per_step_schedule: Sequence[int] | None = None,
        kv_repeat: int = 1,
        activation=F.gelu,
        ttt: nn.Module | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.weights_per_step_schedule = weights_per_step_schedule
        self.self_attn = StreamingMultiheadAttention(
            d_model, num_heads, causal=causal, context=context, rope=rope, weights_per_step=weights_per_step,
            weights_per_step_schedule=weights_per_step_schedule, kv_repeat=kv_repeat, **factory,
        )
        self.norm1 = make_norm(norm, d_model, **factory)
        self.norm2 = make_norm(norm, d_model, **factory)
        self.ttt = ttt
        if gating == "none":
            if weights_per_step or isinstance(dim_feedforward, list):
                raise ValueError("per-step feed-forward weights need a gated FFN (gating != 'none')")
            self.linear1 = nn.Linear(d_model, dim_feedforward, bias=False, **factory)
            self.linear2 = nn.Linear(dim_feedforward, d_model, bias=False, **factory)
            self.activation = activation
            self.gating = None
        else:
            sets = num_weight_sets(weights_per_step, weights_per_step_schedule)
            widths = dim_feedforward if isinstance(dim_feedforward, list) else [dim_feedforward] * sets
            if len(widths) != sets:
                raise ValueError(f"dim_feedforward lists {len(widths)} widths for {sets} weight sets")
            gates = [ActivationGating(d_model, width, gating, **factory) for width in widths]
            self.gating = nn.ModuleList(gates) if weights_per_step else gates[0]
        if layer_scale is None:
            self.layer_scale_1, self.layer_scale_2 = nn.Identity(), nn.Identity()
        else:
            self.layer_scale_1 = LayerScale(d_model, layer_scale, **factory)
            self.layer_scale_2 = LayerScale(d_model, layer_scale, **factory)

    def _feed_forward(self, x: torch.Tensor, first_step: int) -> torch.Tensor:
        if self.gating is None:
            return self.linear2(self.activation(self.linear1(x)))
        if isinstance(self.gating, nn.ModuleList):
            return apply_per_step(self.gating, x, first_step, self.weights_per_step_schedule)
        return self.gating(x)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, first_step: int = 0) -> torch.Tensor:
        update = self.self_attn(self.norm1(x), offsets, first_step)
        x = x.to(update) + self.layer_scale_1(update)
        if self.ttt is not None:
            x = self.ttt(x)
        update = self._feed_forward(self.norm2(x), first_step)
        return x.to(update) + self.layer_scale_2(update)


@dataclasses.dataclass
class TransformerState(State):
    """Position of every batch item `[B]` and the number of steps taken (selects per-step weights)."""

    offsets: torch.Tensor
    steps: int = 0

    def reset(self, reset_mask: torch.Tensor) -> None:
        super().reset(reset_mask)
        self.offsets.masked_fill_(reset_mask, 0)
        self.steps = 0

    def rollback(self, checkpoint: TransformerState, keep: torch.Tensor | None = None) -> None:
        """Back to the checkpoint's positions, plus `keep[b]` for the items that executed (`steps` counts the longest
        kept)."""
        self.exec_mask.copy_(checkpoint.exec_mask)
        kept = 0 if keep is None else keep * checkpoint.exec_mask
        self.offsets.copy_(checkpoint.offsets + kept)
        self.steps = checkpoint.steps + (0 if keep is None else int(keep.max()))


class StreamingTransformer(StreamingModule[TransformerState]):
    """A stack of `StreamingTransformerLayer` on `[B, T, d_model]`.

    `positional_embedding`: `rope` (rotary in attention), `sin` (added sinusoids), `sin_rope` (both) or `none`.
    `ttt_blocks` optionally maps layer index -> a test-time-training block placed after that layer's attention.
    `checkpointing`: outside streaming and with gradients enabled, each layer keeps only its input for backward and
    runs again there (activation checkpointing; same numbers, less memory). Remaining keyword arguments go to every
    layer.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int | list[int] = 2048,
        causal: bool = False,
        context: int | None = None,
        positional_embedding: str = "sin",
        max_period: float = 10_000,
        positional_scale: float = 1.0,
        ttt_blocks: dict[int, nn.Module] | None = None,
        checkpointing: bool = False,
        device=None,
        dtype=None,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        if positional_embedding not in POSITIONAL_EMBEDDINGS:
            raise ValueError(f"unknown positional_embedding {positional_embedding!r}; expected {POSITIONAL_EMBEDDINGS}")
        self.d_model = d_model
        self.positional_embedding = positional_embedding
        self.max_period = max_period
        self.positional_scale = positional_scale
        self.checkpointing = checkpointing
        self.rope = RotaryEmbedding(max_period) if positional_embedding in ("rope", "sin_rope") else None
        ttt_blocks = ttt_blocks or {}
        self.layers = nn.ModuleList(
            StreamingTransformerLayer(
                d_model, num_heads, dim_feedforward=dim_feedforward, causal=causal, context=context, rope=self.rope,
                ttt=ttt_blocks.get(i), device=device, dtype=dtype, **layer_kwargs,
            )
            for i in range(num_layers)
        )

    def attention_contexts(self) -> list[int | None]:
        """The attention context of each layer (None: unbounded)."""
        return [layer.self_attn.context for layer in self.layers]

    def set_attention_contexts(self, contexts: Mapping[int, int | None]) -> None:
        """Give the layers at the indices of `contexts` their new attention context (outside streaming: the KV caches
        are sized by it)."""
        for index, context in contexts.items():
            _set_context(self.layers[index].self_attn, context)

    def _init_streaming_state(self, batch_size: int) -> TransformerState:
        device = module_device(self)
        return TransformerState(batch_size, device, offsets=torch.zeros(batch_size, device=device, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[B, T, d_model]` -> `[B, T, d_model]`, continuing the stream when streaming."""
        B, T, C = x.shape
        state = self._streaming_state
        if state is None:
            offsets, first_step = torch.zeros(B, device=x.device, dtype=torch.long), 0
        else:
            offsets, first_step = state.offsets, state.steps
        if self.positional_embedding in ("sin", "sin_rope"):
            positions = offsets[:, None] + torch.arange(T, device=x.device)
            x = x + self.positional_scale * sin_embedding(positions, C, self.max_period, x.dtype)
        input_dtype = x.dtype
        recompute = self.checkpointing and state is None and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, offsets, first_step, use_reentrant=False, preserve_rng_state=False)
            else:
                x = layer(x, offsets, first_step)
        if state is not None:
            state.offsets.add_(state.exec_mask.long() * T)
            state.steps += T
        return x.to(input_dtype)


class ProjectedTransformer(StreamingContainer):
    """A `StreamingTransformer` with optional input/output projections and several outputs.

    With `conv_layout` the inputs and outputs are `[B, C, T]` instead of `[B, T, C]`.
    """

    def __init__(
        self,
        input_dimension: int,
        output_dimensions: Sequence[int],
        d_model: int,
        *,
        conv_layout: bool = False,
        device=None,
        dtype=None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.conv_layout = conv_layout
        self.transformer = StreamingTransformer(d_model=d_model, device=device, dtype=dtype, **kwargs)
        self.input_proj = (
            None if input_dimension == d_model
            else nn.Linear(input_dimension, d_model, bias=False, device=device, dtype=dtype)
        )
        self.output_projs = nn.ModuleList(
            nn.Identity() if dim == d_model else nn.Linear(d_model, dim, bias=False, device=device, dtype=dtype)
            for dim in output_dimensions
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.conv_layout:
            x = x.transpose(1, 2)
        if self.input_proj is not None:
            x = self.input_proj(x)
        z = self.transformer(x)
        outputs = [proj(z) for proj in self.output_projs]
        return [y.transpose(1, 2) for y in outputs] if self.conv_layout else outputs


def _set_context(attention: StreamingMultiheadAttention, context: int | None) -> None:
    if attention.is_streaming:
        raise RuntimeError("the attention context cannot change while streaming (the KV cache is sized by it)")
    if context is not None and context < 1:
        raise ValueError(f"an attention context must be at least 1 step, got {context}")
    attention.context = context


def set_attention_context(model: nn.Module, context: int | None) -> None:
    """Change the attention context of every attention layer of `model` (outside streaming)."""
    for module in model.modules():
        if isinstance(module, StreamingMultiheadAttention):
            _set_context(module, context)


@contextlib.contextmanager
def bounded_attention_context(transformer: StreamingTransformer, steps: int) -> Iterator[None]:
    """Inside the block, no layer of `transformer` attends further back than `steps` steps (restored afterwards).

    When no stream runs more than `steps` steps between resets, no query reaches further back anyway: the attention is
    the same, and the KV caches (sized by the context) hold `steps` entries instead of the full context.
    """
    saved = transformer.attention_contexts()
    transformer.set_attention_contexts(
        {index: steps if context is None else min(context, steps) for index, context in enumerate(saved)})
    try:
        yield
    finally:
        transformer.set_attention_contexts(dict(enumerate(saved)))


__all__ = [
    "AttentionState",
    "ProjectedTransformer",
    "StreamingMultiheadAttention",
    "StreamingTransformer",
    "StreamingTransformerLayer",
    "TransformerState",
    "bounded_attention_context",
    "set_attention_context",
    "sin_embedding",
]

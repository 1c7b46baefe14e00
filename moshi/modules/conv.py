"""Causal 1-d convolutions that can run on a whole signal or on consecutive pieces of it.

Both modules are causal: output step `t` only depends on inputs up to the end of the stride window of `t`. Run on a
whole signal (no streaming), the input is padded on the left exactly as an empty stream would be, so that encoding a
signal in one call or piece by piece gives the same values.

The checkpoint layout keeps one wrapper level around the torch module: `conv.conv.weight` for a convolution and
`convtr.convtr.weight` for a transposed convolution. Only plain weights are supported (`norm="none"`): released
checkpoints fold the training-time weight normalisation into the weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from moshi.modules.streaming import State, StreamingModule

PAD_MODES = ("constant", "replicate")


def check_plain_norm(norm: str) -> None:
    if norm != "none":
        raise ValueError(f"only norm='none' is supported (weights are stored without parametrization), got {norm!r}")


def check_causal(causal: bool) -> None:
    if not causal:
        raise ValueError("only causal convolutions are supported (causal=True)")


def check_trim_right_ratio(trim_right_ratio: float) -> None:
    if trim_right_ratio != 1.0:
        raise ValueError(f"only trim_right_ratio=1.0 is supported (causal: all trimming on the right), "
                         f"got {trim_right_ratio}")


class _Conv1dHolder(nn.Module):
    """Holds the torch convolution under the name `conv` (checkpoint key `...conv.conv.weight`)."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _ConvTranspose1dHolder(nn.Module):
    """Holds the torch transposed convolution under the name `convtr` (key `...convtr.convtr.weight`)."""

    def __init__(self, convtr: nn.ConvTranspose1d) -> None:
        super().__init__()
        self.convtr = convtr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convtr(x)


@dataclasses.dataclass
class ConvState(State):
    """`history` `[B, C_in, K_eff - S]`: the last inputs seen, the left context of the next piece.

    `fresh` `[B]` is True while an item has not seen any input yet (replicate padding copies its first sample).
    """

    history: torch.Tensor
    fresh: torch.Tensor

    def reset(self, reset_mask: torch.Tensor) -> None:
        super().reset(reset_mask)
        self.history.masked_fill_(reset_mask.view(-1, 1, 1), 0.0)
        self.fresh.logical_or_(reset_mask)


class StreamingConv1d(StreamingModule[ConvState]):
    """Causal `Conv1d`: the input is left-padded by `(kernel_size - 1) * dilation + 1 - stride` steps.

    Input `[B, C_in, T]` with `T` a positive multiple of `stride`; output `[B, C_out, T // stride]`.
    `pad_mode` is "constant" (zeros) or "replicate" (the first sample of the signal). `norm_kwargs` completes
    upstream's signature; with plain weights it has nothing to configure.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        causal: bool = True,
        norm: str = "none",
        norm_kwargs: dict[str, Any] | None = None,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        check_causal(causal)
        check_plain_norm(norm)
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if kernel_size < stride:
            raise ValueError(f"kernel_size ({kernel_size}) must be at least the stride ({stride})")
        self.pad_mode = pad_mode
        self.conv = _Conv1dHolder(
            nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation, groups=groups, bias=bias)
        )

    @property
    def stride(self) -> int:
        return self.conv.conv.stride[0]

    @property
    def effective_kernel_size(self) -> int:
        """The span of one output window in input steps, dilation included."""
        conv = self.conv.conv
        return (conv.kernel_size[0] - 1) * conv.dilation[0] + 1

    @property
    def left_padding(self) -> int:
        return self.effective_kernel_size - self.stride

    def _init_streaming_state(self, batch_size: int) -> ConvState:
        weight = self.conv.conv.weight
        history = torch.zeros(
            batch_size, self.conv.conv.in_channels, self.left_padding, device=weight.device, dtype=weight.dtype
        )
        fresh = torch.ones(batch_size, device=weight.device, dtype=torch.bool)
        return ConvState(batch_size, weight.device, history, fresh)

    def _check_length(self, x: torch.Tensor) -> None:
        if x.dim() != 3:
            raise ValueError(f"{type(self).__name__} expects [B, C, T], got shape {list(x.shape)}")
        length = x.shape[-1]
        if length == 0 or length % self.stride != 0:
            raise ValueError(f"input length {length} must be a positive multiple of the stride {self.stride}")

    def _pad_whole_signal(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.left_padding
        if padding == 0:
            return x
        if self.pad_mode == "replicate":
            return torch.cat([x[..., :1].expand(-1, -1, padding), x], dim=-1)
        return nn.functional.pad(x, (padding, 0))

    def _with_history(self, x: torch.Tensor, state: ConvState) -> torch.Tensor:
        """Prepends the stored left context to `x` and stores the new one (items allowed by `exec_mask`)."""
        padding = self.left_padding
        if padding == 0:
            return x
        run = state.exec_mask.view(-1, 1, 1)
        if self.pad_mode == "replicate":
            starts = state.fresh.view(-1, 1, 1) & run
            state.history.copy_(torch.where(starts, x[..., :1].expand_as(state.history), state.history))
            state.fresh.logical_and_(~state.exec_mask)
        extended = torch.cat([state.history, x], dim=-1)
        state.history.copy_(torch.where(run, extended[..., -padding:], state.history))
        return extended

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C_in, T]` -> `[B, C_out, T // stride]`."""
        self._check_length(x)
        if self._streaming_state is None:
            return self.conv(self._pad_whole_signal(x))
        return self.conv(self._with_history(x, self._streaming_state))


@dataclasses.dataclass
class ConvTransposeState(State):
    """`overlap` `[B, C_out, K - S]`: contributions of past inputs to outputs not emitted yet (bias excluded)."""

    overlap: torch.Tensor

    def reset(self, reset_mask: torch.Tensor) -> None:
        super().reset(reset_mask)
        self.overlap.masked_fill_(reset_mask.view(-1, 1, 1), 0.0)


class StreamingConvTranspose1d(StreamingModule[ConvTransposeState]):
    """Causal `ConvTranspose1d`: input `[B, C_in, T]` -> output `[B, C_out, T * stride]`.

    Each input step emits `stride` finished outputs; the `kernel_size - stride` outputs that future inputs still add to
    are held back (dropped on a whole signal, carried over while streaming).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        causal: bool = True,
        norm: str = "none",
        trim_right_ratio: float = 1.0,
        norm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_causal(causal)
        check_plain_norm(norm)
        check_trim_right_ratio(trim_right_ratio)
        if kernel_size < stride:
            raise ValueError(f"kernel_size ({kernel_size}) must be at least the stride ({stride})")
        self.convtr = _ConvTranspose1dHolder(
            nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias)
        )

    @property
    def stride(self) -> int:
        return self.convtr.convtr.stride[0]

    @property
    def held_back(self) -> int:
        """Number of trailing outputs that are not final after a call."""
        return self.convtr.convtr.kernel_size[0] - self.stride

    def _init_streaming_state(self, batch_size: int) -> ConvTransposeState:
        weight = self.convtr.convtr.weight
        overlap = torch.zeros(
            batch_size, self.convtr.convtr.out_channels, self.held_back, device=weight.device, dtype=weight.dtype
        )
        return ConvTransposeState(batch_size, weight.device, overlap)

    def _carry_overlap(self, y: torch.Tensor, state: ConvTransposeState) -> torch.Tensor:
        """Adds the stored overlap to the head of `y`, stores its new tail and returns the finished part."""
        held = self.held_back
        if held == 0:
            return y
        y = torch.cat([y[..., :held] + state.overlap, y[..., held:]], dim=-1)
        tail = y[..., -held:]
        bias = self.convtr.convtr.bias
        if bias is not None:
            tail = tail - bias[:, None]
        state.overlap.copy_(torch.where(state.exec_mask.view(-1, 1, 1), tail, state.overlap))
        return y[..., :-held]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C_in, T]` -> `[B, C_out, T * stride]`."""
        if x.dim() != 3 or x.shape[-1] == 0:
            raise ValueError(f"{type(self).__name__} expects a non-empty [B, C, T], got shape {list(x.shape)}")
        y = self.convtr(x)
        if self._streaming_state is None:
            return y[..., : y.shape[-1] - self.held_back]
        return self._carry_overlap(y, self._streaming_state)

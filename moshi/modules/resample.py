"""Learned integer-ratio resampling of a latent sequence (Mimi: 25 Hz encoder rate <-> 12.5 Hz code rate).

Downsampling is a causal strided convolution with a kernel of twice the stride whose left context starts as copies of
the first step; upsampling is the matching causal transposed convolution, per channel when `channel_wise` (as in the
released Mimi checkpoints). Checkpoint keys: `conv.conv.conv.weight` and `convtr.convtr.convtr.weight`.
"""

from __future__ import annotations

from typing import Any

import torch

from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d
from moshi.modules.streaming import StreamingContainer


def resampling_conv_kwargs(stride: int, dimension: int, causal: bool, channel_wise: bool) -> dict[str, Any]:
    """What the down- and upsampling convolutions share: a kernel of twice the stride, no bias, optionally per
    channel."""
    if stride < 1:
        raise ValueError(f"resampling stride must be a positive integer, got {stride}")
    groups = dimension if channel_wise else 1
    return {"kernel_size": 2 * stride, "stride": stride, "groups": groups, "bias": False, "causal": causal}


class ConvDownsample1d(StreamingContainer):
    """`[B, dimension, T]` -> `[B, dimension, T // stride]` (T a positive multiple of stride)."""

    def __init__(self, stride: int, dimension: int, causal: bool = True, channel_wise: bool = False) -> None:
        super().__init__()
        kwargs = resampling_conv_kwargs(stride, dimension, causal, channel_wise)
        self.conv = StreamingConv1d(dimension, dimension, pad_mode="replicate", **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvTrUpsample1d(StreamingContainer):
    """`[B, dimension, T]` -> `[B, dimension, T * stride]`."""

    def __init__(self, stride: int, dimension: int, causal: bool = True, channel_wise: bool = False) -> None:
        super().__init__()
        self.convtr = StreamingConvTranspose1d(
            dimension, dimension, **resampling_conv_kwargs(stride, dimension, causal, channel_wise))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convtr(x)

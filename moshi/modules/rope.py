"""Rotary positional embedding (Su et al. 2021) with interleaved (real, imaginary) channel pairs."""

from __future__ import annotations

import math

import torch
from torch import nn


def rotation_angles(positions: torch.Tensor, head_dim: int, max_period: float) -> torch.Tensor:
    """Angles `[B, 1, T, head_dim // 2]` (float32) for integer `positions` `[B, T]`."""
    half = head_dim // 2
    frequencies = torch.exp(
        torch.arange(half, device=positions.device, dtype=torch.float32) * (-2.0 * math.log(max_period) / head_dim)
    )
    return positions.to(torch.float32)[:, None, :, None] * frequencies


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate each channel pair of `x` `[B, H, T, D]` by the given angles; computed in float32."""
    d = x.shape[-1]
    if interleave:
        pairs = x.float().unflatten(-1, (d // 2, 2))
        real, imag = pairs[..., 0], pairs[..., 1]
    else:
        real, imag = x.float()[..., : d // 2], x.float()[..., d // 2:]
    rotated_real = real * cos - imag * sin
    rotated_imag = real * sin + imag * cos
    if interleave:
        out = torch.stack([rotated_real, rotated_imag], dim=-1).flatten(-2)
    else:
        out = torch.cat([rotated_real, rotated_imag], dim=-1)
    return out.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Applies RoPE to queries and keys `[B, H, T, D]` at absolute `positions` `[B, T]`."""

    def __init__(self, max_period: float = 10_000.0, interleave: bool = True) -> None:
        super().__init__()
        self.max_period = max_period
        self.interleave = interleave

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        angles = rotation_angles(positions, q.shape[-1], self.max_period)
        cos, sin = torch.cos(angles), torch.sin(angles)
        return rotate_pairs(q, cos, sin, self.interleave), rotate_pairs(k, cos, sin, self.interleave)

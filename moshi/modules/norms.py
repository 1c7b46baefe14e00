"""Normalisations and layer scale used by the transformers."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension with a learned gain `alpha` `[1, 1, dim]`.

    With `compute_dtype` set (the `rms_norm_f32` flavour) the statistics and scaling run in that dtype.
    """

    def __init__(self, dim: int, eps: float, compute_dtype: torch.dtype | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.compute_dtype = compute_dtype
        self.alpha = nn.Parameter(torch.ones(1, 1, dim, device=device, dtype=compute_dtype or dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.compute_dtype is None else x.to(self.compute_dtype)
        inv_rms = torch.rsqrt(self.eps + y.pow(2).mean(dim=-1, keepdim=True))
        return (y * (self.alpha.to(inv_rms) * inv_rms)).to(x.dtype)


class LayerNormF32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch; `channel_last` selects `[*, C]` or `[*, C, T]` inputs."""

    def __init__(self, channels: int, init: float, channel_last: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), init, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x if self.channel_last else self.scale[:, None] * x


NORMS = ("layer_norm", "layer_norm_f32", "rms_norm", "rms_norm_f32")


def make_norm(kind: str, dim: int, device=None, dtype=None) -> nn.Module:
    """Build one of `NORMS` for `dim` channels."""
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=1e-5, device=device, dtype=dtype)
    if kind == "layer_norm_f32":
        return LayerNormF32(dim, eps=1e-8, device=device)
    if kind == "rms_norm":
        return RMSNorm(dim, eps=1e-5, device=device, dtype=dtype)
    if kind == "rms_norm_f32":
        return RMSNorm(dim, eps=1e-8, compute_dtype=torch.float32, device=device)
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")

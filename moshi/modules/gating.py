"""Gated feed-forward blocks (GLU family): `out(act(x W_a) * (x W_b))`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,
    "mish": F.mish,
    "softsign": F.softsign,
    "identity": lambda x: x,
}


def gated_hidden_size(dim: int, dim_feedforward: int) -> int:
    """Hidden width keeping about the parameter count of a plain FFN of width `dim_feedforward`."""
    if dim_feedforward == 4 * dim:
        return (21 * dim) // 8
    return (2 * dim_feedforward) // 3


class ActivationGating(nn.Module):
    """Gated FFN on `[B, T, dim]`: one input projection to both halves, one output projection."""

    def __init__(self, dim: int, dim_feedforward: int, activation: str, device=None, dtype=None) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown gating activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        hidden = gated_hidden_size(dim, dim_feedforward)
        self.activation = ACTIVATIONS[activation]
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False, device=device, dtype=dtype)
        self.linear_out = nn.Linear(hidden, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.linear_in(x).unflatten(-1, (2, -1)).unbind(-2)
        return self.linear_out(self.activation(gate) * value)

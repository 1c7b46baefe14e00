"""Tensor conditioners of upstream (raw tensors passed through); refused in this fork."""

from __future__ import annotations

from .base import BaseConditioner


class TensorConditioner(BaseConditioner):
    """Upstream's pass-through tensor conditioner; building one raises `NotImplementedError`."""


__all__ = ["TensorConditioner"]

"""Text conditioners of upstream (look-up tables over hashed or listed values); refused in this fork."""

from __future__ import annotations

from .base import BaseConditioner


class LUTConditioner(BaseConditioner):
    """Upstream's look-up-table text conditioner; building one raises `NotImplementedError`."""


__all__ = ["LUTConditioner"]

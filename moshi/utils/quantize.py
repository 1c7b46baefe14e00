"""Upstream's bitsandbytes int8 linear layers (`QLinear`, `replace_linear_with_qlinear`); not part of this fork."""

from __future__ import annotations

from ..unsupported import refused_names

__getattr__ = refused_names("bitsandbytes quantization is not supported by this fork (load the bf16 checkpoints)")

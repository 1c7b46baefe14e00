"""Building blocks of the models: streaming lifecycle, transformer, convolutions, LoRA.

Names load lazily on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY_NAMES = {
    "StreamingConv1d": "conv",
    "StreamingConvTranspose1d": "conv",
    "StreamingModule": "streaming",
    "StreamingTransformer": "transformer",
    "SEANetEncoder": "seanet",
    "SEANetDecoder": "seanet",
    "LoRALinear": "lora",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        module = importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LoRALinear",
    "SEANetDecoder",
    "SEANetEncoder",
    "StreamingConv1d",
    "StreamingConvTranspose1d",
    "StreamingModule",
    "StreamingTransformer",
]

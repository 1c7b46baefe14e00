"""Moshi speech-text foundation model (fork): streaming LM, Mimi codec, exact streaming logits and TTT layers.

Importing `moshi` is cheap: the subpackages `conditioners`, `models`, `modules`, `quantization` and `utils` load
on first access.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.2.13+fork.1"

_SUBPACKAGES = ("conditioners", "models", "modules", "quantization", "utils")


def __getattr__(name: str) -> ModuleType:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", "conditioners", "models", "modules", "quantization", "utils"]

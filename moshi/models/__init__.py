"""The Moshi language model, its streaming generator, the Mimi codec and the checkpoint loaders.

Names load lazily so that `import moshi.models` stays cheap and one missing optional piece does not break the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY_NAMES = {
    "LMModel": "lm",
    "LMGen": "lm",
    "MimiModel": "compression",
    "get_moshi_lm": "loaders",
    "get_mimi": "loaders",
    "CheckpointInfo": "loaders",
}
_SUBMODULES = ("lm", "compression", "loaders")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        module = importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CheckpointInfo", "LMGen", "LMModel", "MimiModel", "get_mimi", "get_moshi_lm", "loaders"]

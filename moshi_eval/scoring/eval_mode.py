"""Modules in eval mode for a block, each given back in the mode it was in (a training loop may evaluate the model it
trains)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def eval_mode(*modules: Any) -> Iterator[None]:
    """Modules in eval mode inside the block, each back in its own mode afterwards; None entries are passed over."""
    present = [module for module in modules if module is not None]
    modes = [module.training for module in present]
    for module in present:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(present, modes):
            module.train(mode)

"""Files that other runs may read at any moment: written atomically, with the permissions of the process umask.

A file is written to a temporary name in its own directory and renamed into place, so a concurrent reader sees the
old file or the new one, never half of one. `tempfile` creates files readable by their owner only; the final file gets
the mode an ordinary `open` would give (0644 under the usual umask 022), so colleagues can read results and share a
cache. JSON results go through `json_safe` first (no NaN in JSON).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary_path)`, then give the file the umask's mode and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, _umask_mode())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is finite: what JSON and training loggers take as a number."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def json_safe(value: Any) -> Any:
    """Floats that are NaN or infinite become None (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text_atomic(path: str | Path, text: str) -> None:
    """A text file, atomically."""
    write_atomic(path, lambda temporary: temporary.write_text(text))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Indented JSON (no NaN allowed), atomically."""

    def write(temporary: Path) -> None:
        temporary.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")

    write_atomic(path, write)


def write_safetensors_atomic(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Contiguous CPU copies of `tensors` with string `metadata`, atomically."""
    contiguous = {name: tensor.contiguous().cpu() for name, tensor in tensors.items()}
    write_atomic(path, lambda temporary: save_file(contiguous, str(temporary), metadata=metadata))

"""Files an evaluation writes for people and for other runs: atomic writes, checked files, and stable identities.

- Results, cache entries and records may be read by other runs at any moment: they are written atomically with
  `moshi.utils.files` (`write_json_atomic`, `write_safetensors_atomic`), JSON results through `json_safe` first (no NaN
  in JSON).
- Checked files (codes-cache entries, resume records) are read back only if they hold what they claim. Each is a
  safetensors file of one tensor whose metadata records what it was made from (`made_from`: the source files'
  identities, the model and settings keys; the very values its name digests) and a checksum of the tensor. Reading it
  back checks, in order: that the file is readable, that the tensor matches its checksum (zeroed or altered data), that
  it was made from what the reader asks for (another book's entry copied under this name), and that its content is in
  range (`check_content`: codes outside the card, losses that are no cross-entropies). A file that fails is reported in
  one `FileNoteWarning` line naming it and what is wrong, and the reader computes it again.
- Identities for caching and resuming: of files (path, size, mtime) and of model weights (a fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from moshi.utils.files import write_atomic

from .errors import FileNoteWarning

MADE_FROM = "made_from"
CHECKSUM = "checksum"
SAMPLED_VALUES_PER_TENSOR = 4096
ContentCheck = Callable[[torch.Tensor], "str | None"]


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


def write_safetensors_atomic(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Contiguous CPU copies of `tensors` with string `metadata`, atomically."""
    contiguous = {name: tensor.contiguous().cpu() for name, tensor in tensors.items()}
    write_atomic(path, lambda temporary: save_file(contiguous, str(temporary), metadata=metadata))


def tensor_checksum(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    hasher = hashlib.sha256(f"{flat.dtype}|{tuple(tensor.shape)}|".encode())
    hasher.update(flat.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def as_json(value: Any) -> Any:
    """`value` as it reads back from the JSON metadata (tuples become lists, paths strings; keys keep their order)."""
    return json.loads(json.dumps(value, default=str))


def write_checked(path: str | Path, name: str, tensor: torch.Tensor, made_from: Mapping[str, Any],
                  metadata: Mapping[str, str] | None = None) -> None:
    """`tensor` under `name` with what it was made from and its checksum (plus `metadata`), atomically."""
    recorded = {**(metadata or {}), MADE_FROM: json.dumps(as_json(made_from)),
                CHECKSUM: tensor_checksum(tensor)}
    write_safetensors_atomic(path, {name: tensor}, recorded)


def read_checked(path: str | Path, name: str, made_from: Mapping[str, Any], what: str, redo: str,
                 check_content: ContentCheck | None = None) -> tuple[torch.Tensor, dict[str, str]] | None:
    """The tensor `name` and the metadata of the file at `path`, or None when it is absent or fails a check (then a
    `FileNoteWarning` says `<path>: <what> <problem>; <redo>`, e.g. `codes cache entry of 7/first ...; encoding it
    again`)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensor = handle.get_tensor(name) if name in list(handle.keys()) else None
    except (SafetensorError, OSError) as error:
        problem = f"is not a readable safetensors file ({error})"
    else:
        problem = file_problem(tensor, metadata, name, as_json(made_from))
        if problem is None and check_content is not None:
            problem = check_content(tensor)
    if problem is None:
        return tensor, metadata
    warnings.warn(f"{path}: {what} {problem}; {redo}", FileNoteWarning, stacklevel=3)
    return None


def file_problem(tensor: torch.Tensor | None, metadata: dict[str, str], name: str, expected: Any) -> str | None:
    """What is wrong with a file's tensor and metadata, or None."""
    if tensor is None:
        return f"holds no {name!r} tensor"
    if CHECKSUM not in metadata or MADE_FROM not in metadata:
        return "carries no checksum or origin (written by an older version)"
    if metadata[CHECKSUM] != tensor_checksum(tensor):
        return f"does not match its checksum: its {name} were altered or corrupted"
    try:
        found = json.loads(metadata[MADE_FROM])
    except json.JSONDecodeError:
        return "has an unreadable origin record"
    difference = first_difference(expected, found)
    if difference is not None:
        return f"was made from something else ({difference})"
    return None


def first_difference(expected: Any, found: Any, where: str = "") -> str | None:
    """The first place where two JSON values differ, as `<where> is <found> in the file, <expected> here` (keys in the
    order the reader gives them: a file identity's path before its size and time)."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in [*expected, *(key for key in found if key not in expected)]:
            inner = f"{where}.{key}" if where else str(key)
            difference = first_difference(expected.get(key), found.get(key), inner)
            if difference is not None:
                return difference
        return None
    if isinstance(expected, list) and isinstance(found, list) and len(expected) == len(found):
        for index, (a, b) in enumerate(zip(expected, found)):
            difference = first_difference(a, b, f"{where}[{index}]")
            if difference is not None:
                return difference
        return None
    if expected != found:
        return f"{where or 'its origin'} is {json.dumps(found)} in the file, {json.dumps(expected)} here"
    return None


def digest(value: Any, length: int = 16) -> str:
    """Hex digest of a JSON-serializable value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_identity(path: Path | str) -> dict[str, Any]:
    """Absolute path, size and modification time: changes whenever the file is replaced or edited."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def weights_fingerprint(module: nn.Module) -> str:
    """Identity of a module's weights: names, shapes, dtypes and a strided sample of every parameter and buffer.

    Reading a strided sample keeps this fast on multi-billion-parameter models while any two different checkpoints
    (which differ in essentially every value) get different fingerprints.
    """
    hasher = hashlib.sha256()
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // SAMPLED_VALUES_PER_TENSOR)
        sample = flat[::stride][:SAMPLED_VALUES_PER_TENSOR].to(device="cpu", dtype=torch.float32).contiguous()
        hasher.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        hasher.update(sample.numpy().tobytes())
    return hasher.hexdigest()[:24]



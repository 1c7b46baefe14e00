"""Files a run writes for later runs (codes-cache entries, resume records), read back only if they hold what they claim.

Each such file is a safetensors file of one tensor whose metadata records what it was made from (`made_from`: the
source files' identities, the model and settings keys; the very values its name digests) and a checksum of the
tensor. Reading it back checks, in order: that the file is readable, that the tensor matches its checksum (zeroed or
altered data), that it was made from what the reader asks for (another book's entry copied under this name), and that
its content is in range (`check_content`: codes outside the card, losses that are no cross-entropies). A file that
fails is reported in one `FileNoteWarning` line naming it and what is wrong, and the reader computes it again.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .errors import FileNoteWarning
from .files import write_safetensors_atomic

MADE_FROM = "made_from"
CHECKSUM = "checksum"
ContentCheck = Callable[[torch.Tensor], "str | None"]


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

"""Short identities for caching and resuming: of files (path, size, mtime) and of model weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

SAMPLED_VALUES_PER_TENSOR = 4096


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

"""A directory of Mimi codes in safetensors files, keyed by what the codes depend on.

The key of an entry is a digest of the source files' identities (path, size, mtime), the Mimi weights fingerprint and the
number of codebooks; the same audio is therefore encoded once and reused by every run and every LM checkpoint. An entry
may hold only the first frames of a long sequence (`complete` false): it serves any request for at most that many frames.
Writes go to a temporary file renamed into place, so concurrent runs never see half-written entries.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

DEFAULT_CACHE_ENV = "MOSHI_EVAL_CACHE"


def default_cache_dir() -> Path:
    if os.environ.get(DEFAULT_CACHE_ENV):
        return Path(os.environ[DEFAULT_CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moshi_eval" / "librilight_codes"


class CodesCache:
    """`get(key, min_frames)` / `put(key, codes, complete)` over safetensors files in `directory`."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def get(self, key: str, min_frames: int) -> torch.Tensor | None:
        """Cached codes `[K, T]` (cut to `min_frames` when longer), or None when absent, unreadable or too short."""
        path = self.path_for(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                codes = handle.get_tensor("codes")
        except (SafetensorError, OSError):
            self.misses += 1
            return None
        complete = metadata.get("complete") == "true"
        if codes.shape[-1] < min_frames and not complete:
            self.misses += 1
            return None
        self.hits += 1
        return codes[..., :min_frames]

    def put(self, key: str, codes: torch.Tensor, complete: bool, description: str = "") -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        os.close(handle)
        try:
            metadata = {"complete": "true" if complete else "false", "description": description}
            save_file({"codes": codes.contiguous().cpu()}, temporary, metadata=metadata)
            os.replace(temporary, self.path_for(key))
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

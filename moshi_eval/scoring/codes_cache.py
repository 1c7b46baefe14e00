"""A directory of Mimi codes in safetensors files, keyed by what the codes depend on.

The key of an entry is a digest of the source files' identities (path, size, mtime), the Mimi weights fingerprint and
the number of codebooks; the same audio is therefore encoded once and reused by every run and every LM checkpoint. An
entry may hold only the first frames of a long sequence (`complete` false): it serves any request for at most that many
frames. Entries are written atomically (`files.write_safetensors_atomic`), so concurrent runs never see half-written
ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .files import read_safetensors, write_safetensors_atomic

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
        entry = read_safetensors(self.path_for(key), "codes")
        if entry is None:
            self.misses += 1
            return None
        codes, metadata = entry
        complete = metadata.get("complete") == "true"
        if codes.shape[-1] < min_frames and not complete:
            self.misses += 1
            return None
        self.hits += 1
        return codes[..., :min_frames]

    def put(self, key: str, codes: torch.Tensor, complete: bool, description: str = "") -> None:
        metadata = {"complete": "true" if complete else "false", "description": description}
        write_safetensors_atomic(self.path_for(key), {"codes": codes}, metadata)

"""A directory of Mimi codes in safetensors files, keyed by what the codes depend on.

An entry is filed under a digest of what it is made from (`made_from`: the source files' identities, the Mimi weights
fingerprint, the number of codebooks, the encoding version); the same audio is therefore encoded once and reused by
every run and every LM checkpoint. An entry may hold only the first frames of a long sequence (`complete` false): it
serves any request for at most that many frames. Entries are checked when read (`checked_files`: their checksum, what
they were made from, codes within the card); one that fails is reported in one line and encoded again. Entries are
written atomically, so concurrent runs never see half-written ones. A cache that cannot be written (a colleague's
read-only cache, a full disk) is still read: new codes are then not stored, with one note.
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .checked_files import read_checked, write_checked
from .errors import FileNoteWarning
from .fingerprint import digest

DEFAULT_CACHE_ENV = "MOSHI_EVAL_CACHE"
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def default_cache_dir() -> Path:
    if os.environ.get(DEFAULT_CACHE_ENV):
        return Path(os.environ[DEFAULT_CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moshi_eval" / "librilight_codes"


def codes_problem(codes: torch.Tensor, num_codebooks: int, card: int) -> str | None:
    """What makes `codes` unusable as `[num_codebooks, T]` codes of a codec with `card` values, or None."""
    if codes.dtype != torch.long or codes.dim() != 2 or codes.shape[0] != num_codebooks:
        return f"holds {codes.dtype} codes {list(codes.shape)}, not int64 [{num_codebooks}, T]"
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= card):
        return f"holds codes outside [0, {card}) (found [{int(codes.min())}, {int(codes.max())}])"
    return None


class CodesCache:
    """`get(made_from, ...)` / `put(made_from, codes, complete)` over checked safetensors files in `directory`."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0
        self.writable = True

    def path_for(self, made_from: dict[str, Any]) -> Path:
        return self.directory / f"{digest(made_from, length=32)}.safetensors"

    def get(self, made_from: dict[str, Any], min_frames: int, num_codebooks: int, card: int,
            label: str) -> torch.Tensor | None:
        """Cached codes `[num_codebooks, T]` (cut to `min_frames` when longer), or None when absent, too short or
        failing its checks (reported); `label` names the sequence in the report."""
        entry = read_checked(self.path_for(made_from), "codes", made_from, f"codes cache entry of {label}",
                             "encoding it again", lambda codes: codes_problem(codes, num_codebooks, card))
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

    def put(self, made_from: dict[str, Any], codes: torch.Tensor, complete: bool, label: str = "") -> None:
        """Store `codes` (`complete`: the whole source, not only its first frames); a cache that cannot be written is
        noted once and left as it is."""
        if not self.writable:
            return
        metadata = {"complete": "true" if complete else "false", "description": label}
        try:
            write_checked(self.path_for(made_from), "codes", codes, made_from, metadata)
        except OSError as error:
            if error.errno not in UNWRITABLE:
                raise
            self.writable = False
            warnings.warn(f"{self.directory}: the codes cache cannot be written ({os.strerror(error.errno)}); it is "
                          "still read, but codes encoded by this run are not stored", FileNoteWarning, stacklevel=2)

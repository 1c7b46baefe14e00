"""Finished sequences of a run on disk, so that an interrupted run resumes without recomputing them.

Each finished sequence is written as it completes to `<output stem>.sequences/<key>.safetensors` (per-frame,
per-codebook losses `[T, dep_q]` plus its id and files in the metadata), atomically. The key digests the run key (model
fingerprint and every setting that changes the losses) with the sequence's id and its source files' identities, so a
record is reused only by a run that would compute exactly the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .files import read_safetensors, write_safetensors_atomic
from .fingerprint import digest
from .records import SequenceLosses


def store_dir_for(output: str | Path) -> Path:
    """`results.json` -> `results.sequences/`."""
    output = Path(output)
    return output.with_name(f"{output.stem}.sequences")


class SequenceStore:
    """`load(key)` / `save(key, sequence)` of finished sequences in `directory`, for one `run_key`."""

    def __init__(self, directory: Path | str, run_key: str) -> None:
        self.directory = Path(directory)
        self.run_key = run_key

    def key_for(self, sequence_id: str, source_identity: Any) -> str:
        return digest({"run": self.run_key, "sequence": sequence_id, "source": source_identity}, length=32)

    def path_for(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str) -> SequenceLosses | None:
        entry = read_safetensors(self.path_for(key), "codebook_losses")
        if entry is None:
            return None
        losses, metadata = entry
        if metadata.get("run_key") != self.run_key:
            return None
        return SequenceLosses(metadata["sequence_id"], losses.numpy(), json.loads(metadata.get("files", "[]")))

    def save(self, key: str, sequence: SequenceLosses) -> None:
        metadata = {"run_key": self.run_key, "sequence_id": sequence.sequence_id, "files": json.dumps(sequence.files)}
        write_safetensors_atomic(self.path_for(key), {"codebook_losses": torch.from_numpy(sequence.codebook_losses)},
                                 metadata)

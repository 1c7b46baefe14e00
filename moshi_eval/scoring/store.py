"""Finished sequences of a run on disk, so that an interrupted run resumes without recomputing them.

Each finished sequence is written as it completes to `<output stem>.sequences/<key>.safetensors` (per-frame,
per-codebook losses `[T, dep_q]` plus its id and files in the metadata), atomically. What a record is made from is the
run key (a digest of the model fingerprint and every setting that changes the losses), the sequence's id and its
source files' identities; its file name digests them, so a record is looked up only by a run that would compute exactly
the same thing. Records are checked when read (`checked_files`: their checksum, what they were made from, losses that
are cross-entropies of `dep_q` codebooks); one that fails is reported in one line and scored again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checked_files import read_checked, write_checked
from .fingerprint import digest
from .records import SequenceLosses

RECORD_FORMAT = 2  # 2: records carry what they were made from and a checksum


def store_dir_for(output: str | Path) -> Path:
    """`results.json` -> `results.sequences/`."""
    output = Path(output)
    return output.with_name(f"{output.stem}.sequences")


def losses_problem(losses: torch.Tensor, num_codebooks: int) -> str | None:
    """What makes `losses` unusable as per-frame, per-codebook cross-entropies `[T, num_codebooks]`, or None."""
    if losses.dtype != torch.float32 or losses.dim() != 2 or losses.shape[1] != num_codebooks or not losses.shape[0]:
        return f"holds {losses.dtype} losses {list(losses.shape)}, not float32 [T, {num_codebooks}]"
    defined = losses[~losses.isnan()]
    if bool((defined < 0).any()) or not bool(defined.isfinite().all()):
        return "holds losses that are no cross-entropies (negative or infinite)"
    return None


class SequenceStore:
    """`load(sequence_id, source)` / `save(source, sequence)` of finished sequences in `directory`, for one `run_key`
    and a model of `num_codebooks` scored codebooks."""

    def __init__(self, directory: Path | str, run_key: str, num_codebooks: int) -> None:
        self.directory = Path(directory)
        self.run_key = run_key
        self.num_codebooks = num_codebooks

    def made_from(self, sequence_id: str, source_identity: Any) -> dict[str, Any]:
        return {"run": self.run_key, "sequence": sequence_id, "source": source_identity, "format": RECORD_FORMAT}

    def path_for(self, sequence_id: str, source_identity: Any) -> Path:
        key = digest(self.made_from(sequence_id, source_identity), length=32)
        return self.directory / f"{key}.safetensors"

    def load(self, sequence_id: str, source_identity: Any) -> SequenceLosses | None:
        """The record of this sequence read from these sources, or None when absent or failing its checks
        (reported)."""
        entry = read_checked(self.path_for(sequence_id, source_identity), "codebook_losses",
                             self.made_from(sequence_id, source_identity), f"resume record of {sequence_id}",
                             "scoring it again", lambda losses: losses_problem(losses, self.num_codebooks))
        if entry is None:
            return None
        losses, metadata = entry
        return SequenceLosses(sequence_id, losses.numpy(), json.loads(metadata.get("files", "[]")))

    def save(self, source_identity: Any, sequence: SequenceLosses) -> None:
        write_checked(self.path_for(sequence.sequence_id, source_identity), "codebook_losses",
                      torch.from_numpy(sequence.codebook_losses), self.made_from(sequence.sequence_id, source_identity),
                      {"sequence_id": sequence.sequence_id, "files": json.dumps(sequence.files)})

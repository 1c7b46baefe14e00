"""What one rank finished, as bytes for the other ranks: safetensors with one `[T, dep_q]` loss array per sequence and
everything else (ids, files, skips, counters, timings) as a JSON text in a `uint8` tensor. No pickle travels between
ranks.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch
from safetensors.torch import load, save

from .records import SequenceLosses
from .sources import Skip


@dataclasses.dataclass
class RankReport:
    finished: dict[str, SequenceLosses]
    skips: list[Skip]
    scored_frames: int
    resumed: int
    timing: dict[str, float]

    def to_bytes(self) -> bytes:
        sequences = list(self.finished.values())
        tensors = {f"losses{index}": torch.from_numpy(sequence.codebook_losses).contiguous()
                   for index, sequence in enumerate(sequences)}
        summary = {
            "sequences": [{"id": sequence.sequence_id, "files": sequence.files} for sequence in sequences],
            "skips": [skip.to_dict() for skip in self.skips],
            "scored_frames": self.scored_frames,
            "resumed": self.resumed,
            "timing": self.timing,
        }
        tensors["summary"] = torch.frombuffer(bytearray(json.dumps(summary).encode()), dtype=torch.uint8)
        return save(tensors)

    @classmethod
    def from_bytes(cls, data: bytes) -> RankReport:
        tensors = load(data)
        summary: dict[str, Any] = json.loads(tensors["summary"].numpy().tobytes())
        finished = {}
        for index, entry in enumerate(summary["sequences"]):
            finished[entry["id"]] = SequenceLosses(entry["id"], tensors[f"losses{index}"].numpy(), entry["files"])
        return cls(finished=finished, skips=[Skip(**skip) for skip in summary["skips"]],
                   scored_frames=summary["scored_frames"], resumed=summary["resumed"], timing=summary["timing"])


"""Loading the upstream LM parity cases and feeding them to `LMGen` the way the fixture README describes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from moshi.models.lm import LMGen, LMModel

LM_CASES = ("lm_moshiko_tiny", "lm_moshiko_tiny_silent_user")


@dataclasses.dataclass
class LMCase:
    name: str
    config: dict
    meta: dict
    io: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]

    def model(self, dtype: torch.dtype | None = None) -> LMModel:
        lm = LMModel(**self.config, dtype=dtype).eval()
        lm.load_state_dict(self.weights, strict=True)
        return lm

    @property
    def batch_size(self) -> int:
        return self.io["own_audio"].shape[0]

    @property
    def num_frames(self) -> int:
        return self.io["own_audio"].shape[2]


def load_case(parity_dir: Path, name: str) -> LMCase:
    folder = parity_dir / name
    return LMCase(
        name,
        json.loads((folder / "config.json").read_text()),
        json.loads((folder / "meta.json").read_text()),
        load_file(folder / "io.safetensors"),
        load_file(folder / "model.safetensors"),
    )


def user_input(user_audio: torch.Tensor, step: int) -> torch.Tensor:
    """User tokens `[B, K_user, 1]` fed at `step`: frame step - 1, or -1 (no input) outside the sequence."""
    B, K, T = user_audio.shape
    if 1 <= step <= T:
        return user_audio[:, :, step - 1: step]
    return torch.full((B, K, 1), -1, dtype=torch.long)


def replace_tokens(own_audio: torch.Tensor, delays: list[int], step: int) -> torch.Tensor:
    """Teacher forcing at `step`: entry k is codebook k of frame `step - delays[1 + k]` (0 outside the sequence)."""
    B, K, T = own_audio.shape
    out = torch.zeros(B, K, 1, dtype=torch.long)
    for k in range(K):
        frame = step - delays[1 + k]
        if 0 <= frame < T:
            out[:, k, 0] = own_audio[:, k, frame]
    return out


def teacher_forced_pass(lm_gen: LMGen, own_audio: torch.Tensor, user_audio: torch.Tensor) -> list:
    """Run `step_with_logits` over T + max_delay steps with teacher forcing (inputs moved to the model's device);
    returns the non-None outputs."""
    outputs = []
    delays, device = lm_gen.lm_model.delays, lm_gen.lm_model.device
    for step in range(own_audio.shape[2] + lm_gen.max_delay):
        user, forced = user_input(user_audio, step).to(device), replace_tokens(own_audio, delays, step).to(device)
        out = lm_gen.step_with_logits(user, forced)
        if out is not None:
            outputs.append(out)
    return outputs

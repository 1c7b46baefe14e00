"""`LMGen.step` with sampling draws upstream 0.2.13's tokens (text and audio) under the same seed and weights
(fixture `tests/fixtures/upstream_sampling`, made by its `generate.py` with upstream from PyPI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moshi.models.lm import LMGen, LMModel

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "upstream_sampling"
META = json.loads((FIXTURE / "meta.json").read_text())


def _model() -> LMModel:
    lm = LMModel(**json.loads((FIXTURE / "config.json").read_text())).eval()
    lm.load_state_dict(load_file(FIXTURE / "model.safetensors"), strict=True)
    return lm


def _stream(lm_gen: LMGen, user: torch.Tensor, forced: torch.Tensor | None) -> torch.Tensor:
    """As the fixture's meta.json says: user frame s at step s, no input after the last frame."""
    frames = user.shape[2]
    outputs = []
    with lm_gen.streaming(user.shape[0]):
        for step in range(frames + lm_gen.max_delay):
            frame = user[:, :, step: step + 1] if step < frames else torch.full_like(user[:, :, :1], -1)
            out = lm_gen.step(frame, None if forced is None else forced[:, :, step: step + 1])
            if out is not None:
                outputs.append(out)
    return torch.cat(outputs, dim=2)


@pytest.mark.parametrize("index, name", list(enumerate(META["stream_cases"])))
def test_step_draws_upstreams_text_and_audio_tokens(index, name):
    io = load_file(FIXTURE / "io.safetensors")
    lm_gen = LMGen(_model(), **META["stream_cases"][name])
    torch.manual_seed(1000 + index)
    tokens = _stream(lm_gen, io["user"], io["forced"] if name == "forced_audio" else None)
    expected = io[f"step.{name}"]
    assert torch.equal(tokens[:, 0], expected[:, 0]), "text tokens differ"
    assert torch.equal(tokens, expected), "audio tokens differ"

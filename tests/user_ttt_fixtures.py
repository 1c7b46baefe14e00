"""The `user_ttt` cases: TTT checkpoints and logits computed by the moshi-finetune TTT fork's own code.

Each case lives in `tests/fixtures/user_ttt/<case>` with `train.yaml`, `config.json`, `io.safetensors` and the
adapter-only `ttt_adapters.safetensors` (over the tiny base `tests/fixtures/lm_moshiko_tiny/model.safetensors`); the
one-item cases also hold their consolidated `model.safetensors`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch
import yaml
from lm_fixtures import replace_tokens, user_input
from safetensors.torch import load_file

from moshi.models import loaders
from moshi.models.lm import LMGen, LMModel
from moshi.modules.ttt import TTTConfig

CONSOLIDATED_CASES = ("mlp2", "mlp3", "mlp2_rope")
ADAPTER_ONLY_CASES = ("b2_c4_mlp2_rope", "b2_c4_mlp3_contexts")


@dataclasses.dataclass
class UserCase:
    name: str
    folder: Path
    base_weights: Path
    section: dict
    config: dict
    io: dict[str, torch.Tensor]

    @property
    def consolidated(self) -> Path | None:
        path = self.folder / "model.safetensors"
        return path if path.is_file() else None

    @property
    def adapters(self) -> Path:
        return self.folder / "ttt_adapters.safetensors"

    def ttt_config(self, **changes) -> TTTConfig:
        """`from_moshi_finetune` on the case's YAML section (its note silenced), with `changes` applied."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = TTTConfig.from_moshi_finetune(self.section)
        return dataclasses.replace(config, **changes)

    def model(self, ttt: TTTConfig) -> LMModel:
        """Our LM from the users' own files: the consolidated checkpoint when the case has one, else the base weights
        with the adapter-only file."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.consolidated is not None:
                return loaders.get_moshi_lm(self.consolidated, self.config | {"ttt": ttt}, dtype=torch.float32)
            return loaders.get_moshi_lm(self.base_weights, self.config | {"ttt": ttt}, dtype=torch.float32,
                                        ttt_weights=self.adapters)


def load_user_case(parity_dir: Path, name: str) -> UserCase:
    folder = parity_dir / "user_ttt" / name
    return UserCase(
        name,
        folder,
        parity_dir / "lm_moshiko_tiny" / "model.safetensors",
        yaml.safe_load((folder / "train.yaml").read_text())["ttt"],
        json.loads((folder / "config.json").read_text()),
        load_file(folder / "io.safetensors"),
    )


def max_logit_difference(output, io: dict[str, torch.Tensor]) -> float:
    """Largest |difference| of logits and text logits against the fixture; the NaN masks must agree."""
    worst = 0.0
    for name in ("logits", "text_logits"):
        ours, theirs = getattr(output, name), io[name]
        assert torch.equal(ours.isnan(), theirs.isnan()), f"{name}: NaN masks differ"
        worst = max(worst, (ours.nan_to_num() - theirs.nan_to_num()).abs().max().item())
    return worst


def step_inputs(lm: LMModel, codes: torch.Tensor, num_steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced inputs of `num_steps` steps for `codes` `[B, K, T]`: user tokens `[B, n_q - dep_q, S]`, own
    audio `[B, dep_q, S]` (delayed layout) and text `[B, S]` (the text of frame s at step s, 0 past the end)."""
    own, user = codes[:, 1: 1 + lm.dep_q], codes[:, 1 + lm.dep_q:]
    users = torch.cat([user_input(user, s) for s in range(num_steps)], dim=2)
    owns = torch.cat([replace_tokens(own, lm.delays, s) for s in range(num_steps)], dim=2)
    text = torch.zeros(codes.shape[0], num_steps, dtype=torch.long)
    frames = min(num_steps, codes.shape[2])
    text[:, :frames] = codes[:, 0, :frames]
    return users, owns, text


def streamed_logits(lm: LMModel, codes: torch.Tensor, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced streaming over `codes`: `step_with_logits` per step (`chunk` None) or `step_chunk_with_logits`
    with `chunk` steps per call. Returns audio logits `[B, dep_q, T, card]` and text logits `[B, 1, T, text_card]`."""
    lm_gen = LMGen(lm, use_sampling=False)
    num_steps = codes.shape[2] + lm_gen.max_delay
    users, owns, text = step_inputs(lm, codes, num_steps)
    audio, texts = [], []
    with lm_gen.streaming(codes.shape[0]):
        if chunk is None:
            for s in range(num_steps):
                out = lm_gen.step_with_logits(users[:, :, s: s + 1], owns[:, :, s: s + 1],
                                              text_replace_tokens=text[:, s])
                if out is not None:
                    audio.append(out.audio_logits)
                    texts.append(out.text_logits)
        else:
            for s in range(0, num_steps, chunk):
                part = slice(s, s + chunk)
                out = lm_gen.step_chunk_with_logits(users[:, :, part], owns[:, :, part],
                                                    text_replace_tokens=text[:, part])
                audio.append(out.audio_logits)
                texts.append(out.text_logits)
    audio_logits, text_logits = torch.cat(audio, dim=2), torch.cat(texts, dim=2)
    return audio_logits[:, :, -codes.shape[2]:], text_logits[:, :, -codes.shape[2]:]

"""Inputs of the moshi-finetune compatibility scenario, defined by seeds so that any `moshi` package rebuilds them.

The fixtures under `tests/fixtures/compat/` hold only outputs (losses, gradients, logits). Everything that goes in is
derived here from names and seeds, with torch alone (this module never imports `moshi`), so the generator running
upstream moshi 0.2.13 and the tests running this package feed their models the very same numbers:

- base weights: each tensor of the LM state dict drawn from a generator seeded by the CRC-32 of its key;
- LoRA adapters: the same rule for every `lora_A` / `lora_B` weight, so that `lora_B` is not zero and every adapter
  weight gets a non-trivial gradient;
- token codes `[B, 1 + n_q, T]` with text padding, end-of-padding tokens and a few "no input" (-1) entries.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "compat"
LM_CONFIG_FILE = FIXTURES_DIR / "lm_config.json"

CASES = ("lora", "lora_gc", "full")
"""LoRA, LoRA with gradient checkpointing, full fine-tuning."""

BATCH_SIZE = 2
NUM_FRAMES = 10
LORA_RANK = 4
LORA_SCALING = 2.0
TEXT_PADDING_WEIGHT = 0.5
FIRST_CODEBOOK_WEIGHT_MULTIPLIER = 3.0
SGD_LEARNING_RATE = 0.05
TOLERANCE = 1e-4

_CODES_SEED = 20260
_STACKED_ATTENTION = re.compile(r"^(?P<prefix>.*self_attn)\.(?P<kind>in|out)_projs\.(?P<index>\d+)\.weight$")


def fixture_path(case: str) -> Path:
    """Where the upstream outputs of `case` live: "lora_gc" shares the "lora" file (the generator checks that
    upstream gives identical numbers with and without gradient checkpointing)."""
    return FIXTURES_DIR / f"finetune_{case.removesuffix('_gc')}.safetensors"


def case_uses_lora(case: str) -> bool:
    return case.startswith("lora")


def case_uses_gradient_checkpointing(case: str) -> bool:
    return case.endswith("_gc")


def load_lm_config() -> dict:
    """`LMModel` keyword arguments of the tiny moshiko-structured model (context 6, so T = 10 wraps it)."""
    return json.loads(LM_CONFIG_FILE.read_text())


def seeded_normal(key: str, shape: Sequence[int]) -> torch.Tensor:
    """Standard normal values `[*shape]` from a generator seeded by the CRC-32 of `key`."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.randn(tuple(shape), generator=generator)


def seeded_weight(key: str, shape: Sequence[int]) -> torch.Tensor:
    """A plausible value for the parameter `key`: norms near 1, embeddings unit normal, matrices 1/sqrt(fan_in)."""
    noise = seeded_normal(key, shape)
    if key.endswith(".alpha"):
        return 1.0 + 0.1 * noise
    if "emb" in key.split(".")[0]:
        return noise
    return noise / math.sqrt(shape[-1])


def base_state_dict(shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Seeded float32 weights for every key of an LM state dict, given as `{key: shape}`."""
    return {key: seeded_weight(key, shape) for key, shape in shapes.items()}


def stack_attention_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released checkpoints' layout: per-step `in_projs.{i}` / `out_projs.{i}` stacked into `in_proj_weight` /
    `out_proj.weight` (concatenated along the output dimension, in step order)."""
    stacked: dict[str, list[tuple[int, torch.Tensor]]] = {}
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _STACKED_ATTENTION.match(key)
        if match is None:
            plain[key] = value
            continue
        name = "in_proj_weight" if match["kind"] == "in" else "out_proj.weight"
        stacked.setdefault(f"{match['prefix']}.{name}", []).append((int(match["index"]), value))
    for key, parts in stacked.items():
        plain[key] = torch.cat([value for _, value in sorted(parts, key=lambda part: part[0])], dim=0)
    return plain


def lora_value(key: str, shape: Sequence[int]) -> torch.Tensor:
    """Seeded adapter weight: `lora_A` `[rank, in]` at 1/sqrt(in), `lora_B` `[out, rank]` at 0.2/sqrt(rank)."""
    noise = seeded_normal(key, shape)
    if ".lora_A." in key:
        return noise / math.sqrt(shape[-1])
    return 0.2 * noise / math.sqrt(shape[-1])


def set_lora_values(model: torch.nn.Module) -> int:
    """Overwrite every LoRA adapter weight of `model` in place with `lora_value`; returns how many were set."""
    count = 0
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if ".lora_A." in key or ".lora_B." in key:
                parameter.copy_(lora_value(key, parameter.shape))
                count += 1
    return count


def training_codes(config: Mapping) -> torch.Tensor:
    """Codes `[B, 1 + n_q, T]`: text (half padding, some end-of-padding), own audio, user audio; a few -1 entries."""
    generator = torch.Generator().manual_seed(_CODES_SEED)
    B, T, n_q = BATCH_SIZE, NUM_FRAMES, config["n_q"]
    text = torch.randint(0, config["text_card"], (B, 1, T), generator=generator)
    draw = torch.rand(B, 1, T, generator=generator)
    text = torch.where(draw < 0.5, torch.full_like(text, config["existing_text_padding_id"]), text)
    text = torch.where(draw > 0.9, torch.zeros_like(text), text)
    audio = torch.randint(0, config["card"], (B, n_q, T), generator=generator)
    codes = torch.cat([text, audio], dim=1)
    codes[1, 0, -2:] = -1
    codes[0, 3, 4] = -1
    codes[1, 1 + config["dep_q"]:, 6:] = -1
    return codes

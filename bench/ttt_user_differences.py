"""The effect of each way our users' moshi-finetune TTT departs from the reference TTT, measured on their fixtures.

For every `user_ttt` case (their checkpoint, their `ttt:` YAML section and the logits their code computed), the config
from `TTTConfig.from_moshi_finetune` reproduces their logits; here one field at a time is set back to the reference
behaviour and the max |logit difference| (audio and text logits) against their logits is printed, as a Markdown table
(the numbers of docs/ttt.md). "n/a": the case does not use that feature.

    python bench/ttt_user_differences.py [--parity-dir tests/fixtures]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from moshi.models import loaders
from moshi.modules.ttt import TTTConfig

REPO = Path(__file__).resolve().parents[1]
CASES = ("mlp2", "mlp3", "mlp2_rope", "b2_c4_mlp2_rope", "b2_c4_mlp3_contexts")

# field -> (what it does in their code, the reference setting that replaces it, applies to the case?)
DIFFERENCES = {
    "output_projection": ("post_norm and wo never applied", {"output_projection": True}, lambda c: True),
    "qk_l2_norm": ("Q, K L2-normalised per head", {"qk_l2_norm": False}, lambda c: True),
    "minibatch_causal": ("frames read their whole mini-batch (look-ahead)", {"minibatch_causal": True},
                         lambda c: True),
    "inner_step_divisor": ("causal reference scheme instead (1/i, no look-ahead)",
                           {"minibatch_causal": True, "inner_step_divisor": "position"}, lambda c: True),
    "pad_to_minibatch": ("zero padding to whole mini-batches joins the update", {"pad_to_minibatch": False},
                         lambda c: True),
    "target_norm": ("target ttt_norm(v - k)", {"target_norm": False}, lambda c: True),
    "rope": ("RoPE on Q, K at t mod b", {"rope": False}, lambda c: c.rope),
    "query_update_count": ("3+-layer MLP: update read twice", {"query_update_count": 1},
                           lambda c: c.query_update_count > 1),
    "gate_clamp": ("gate alpha clamped to [-3, 3]", {"gate_clamp": None}, lambda c: True),
    "ln_eps": ("inner LayerNorm eps 1e-8", {"ln_eps": 1e-6}, lambda c: True),
    "ttt_layer_context": ("attention context of TTT layers", {"ttt_layer_context": None},
                          lambda c: c.ttt_layer_context is not None),
    "other_layer_context": ("attention context of other layers", {"other_layer_context": None},
                            lambda c: c.other_layer_context is not None),
}


def case_folder(parity_dir: Path, name: str) -> Path:
    return parity_dir / "user_ttt" / name


def logit_gap(parity_dir: Path, name: str, config: TTTConfig) -> float:
    folder = case_folder(parity_dir, name)
    lm_kwargs = json.loads((folder / "config.json").read_text()) | {"ttt": config}
    consolidated = folder / "model.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if consolidated.is_file():
            lm = loaders.get_moshi_lm(consolidated, lm_kwargs, dtype=torch.float32)
        else:
            lm = loaders.get_moshi_lm(parity_dir / "lm_moshiko_tiny" / "model.safetensors", lm_kwargs,
                                      dtype=torch.float32, ttt_weights=folder / "ttt_adapters.safetensors")
    io = load_file(folder / "io.safetensors")
    with torch.no_grad():
        output = lm(io["codes"])
    return max((getattr(output, key).nan_to_num() - io[key].nan_to_num()).abs().max().item()
               for key in ("logits", "text_logits"))


def their_config(parity_dir: Path, name: str) -> TTTConfig:
    section = yaml.safe_load((case_folder(parity_dir, name) / "train.yaml").read_text())["ttt"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TTTConfig.from_moshi_finetune(section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parity-dir", type=Path, default=REPO / "tests" / "fixtures")
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = {name: their_config(args.parity_dir, name) for name in CASES}
    print("| their code | field: reference value | " + " | ".join(f"`{c}`" for c in CASES) + " |")
    print("|---|---|" + "---|" * len(CASES))
    exact = [f"{logit_gap(args.parity_dir, name, configs[name]):.1e}" for name in CASES]
    print("| (all of it) | `from_moshi_finetune` as is | " + " | ".join(exact) + " |")
    for what, changes, applies in DIFFERENCES.values():
        cells = []
        for name in CASES:
            config = configs[name]
            if not applies(config):
                cells.append("n/a")
                continue
            gap = logit_gap(args.parity_dir, name, dataclasses.replace(config, **changes))
            cells.append(f"{gap:.2g}" if gap >= 1e-5 else f"{gap:.0e}")
        setting = ", ".join(f"{key}={value!r}" for key, value in changes.items())
        print(f"| {what} | `{setting}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

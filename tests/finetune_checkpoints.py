"""Checkpoint folders laid out the way moshi-finetune's `Checkpointer` writes them, over a small base repository.

The base (`write_base`) is a local repository folder: the tiny parity LM (`lm_moshiko_tiny`), a tiny random Mimi with
as many bins as the LM's card (40; codebooks and decoder drawn as the server's demo checkpoint draws them, so that
codes and sound depend on each other), a sentencepiece tokenizer as wide as its text card and a config.json naming them.
Over it:

- kyutai's layout, LoRA (`write_kyutai_lora`): `checkpoint_000010/consolidated/` with config.json (the base config plus
  `lora`, `lora_rank`, `lora_scaling`) and lora.safetensors (the `lora_A` / `lora_B` weights, seeded random);
- kyutai's layout, full (`write_kyutai_full`): config.json and consolidated.safetensors (every weight, adapters merged,
  no LoRA or frozen keys);
- the TTT fork (`write_users_ttt`): config.json, lora.safetensors holding their TTT layers' weights (the user_ttt
  fixture `b2_c4_mlp2_rope`, in their key layout) and training_config.json (their `TrainArgs` as JSON: every `ttt:`
  key, `moshi_paths` naming the base).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.modules.lora import replace_lora_with_linear
from moshi.modules.ttt_finetune import FINETUNE_DEFAULTS
from moshi.server.demo_checkpoint import calibrate_codebooks, redraw_decoder_weights, train_demo_tokenizer

USER_TTT_DIR = Path(__file__).resolve().parent / "fixtures" / "user_ttt"


def tiny_mimi_config(bins: int) -> dict[str, Any]:
    """A Mimi two SEANet filters wide, with 8 codebooks of `bins` entries and a one-layer transformer."""
    return {
        "sample_rate": 24000, "channels": 1, "frame_rate": 12.5,
        "seanet": {"channels": 1, "dimension": 16, "causal": True, "n_filters": 2, "n_residual_layers": 1,
                   "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
                   "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
                   "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": True},
        "quantizer": {"dimension": 8, "n_q": 8, "bins": bins, "input_dimension": 16, "output_dimension": 16},
        "transformer": {"d_model": 16, "num_heads": 2, "num_layers": 1, "causal": True, "layer_scale": 0.01,
                        "context": 250, "conv_layout": True, "max_period": 10000, "gating": "none",
                        "norm": "layer_norm", "positional_embedding": "rope", "dim_feedforward": 32,
                        "input_dimension": 16, "output_dimensions": [16]},
    }


MIMI_CONFIG = tiny_mimi_config(bins=40)

BASE_NAMES = {"moshi_name": "model.safetensors", "mimi_name": "mimi.safetensors",
              "mimi_config_name": "mimi_config.json", "tokenizer_name": "tokenizer.model"}
LORA_ARGS = {"lora": True, "lora_rank": 4, "lora_scaling": 2.0}
USERS_CASE = "b2_c4_mlp2_rope"
TRAINING_ONLY_VALUES = {  # what their TTTArgs writes for the keys that only steer training
    "persistent_states": True, "override_gating_alpha_on_resume": False, "weight_lr_multiplier": 10.0,
    "alpha_lr_multiplier": 100.0, "log_inner_loop_losses": False, "inner_loop_log_interval": 1,
    "save_inner_loop_plots": False, "inner_loop_plot_dir": "./evaluation_plots/inner_loop",
    "optimize_chunk_size": True, "chunk_size": None, "max_chunk_size": 50, "prefer_efficiency": True,
    "normalize_ttt_output": False, "target_output_norm": 25.0, "unfrozen_attention_layers": "none",
    "enable_training_diagnostics": False, "training_diagnostic_frequency": 100,
}


def write_base(folder: Path, parity_dir: Path) -> Path:
    """The base repository folder (see the module docstring)."""
    folder.mkdir(parents=True)
    shutil.copy(parity_dir / "lm_moshiko_tiny" / "model.safetensors", folder / BASE_NAMES["moshi_name"])
    config = json.loads((parity_dir / "lm_moshiko_tiny" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | BASE_NAMES, indent=1))
    torch.manual_seed(0)
    mimi = MimiModel.from_config(MIMI_CONFIG)
    calibrate_codebooks(mimi)
    redraw_decoder_weights(mimi)
    save_file(mimi.state_dict(), folder / BASE_NAMES["mimi_name"])
    (folder / BASE_NAMES["mimi_config_name"]).write_text(json.dumps(MIMI_CONFIG))
    train_demo_tokenizer(folder / BASE_NAMES["tokenizer_name"], vocab_size=config["text_card"])
    return folder


def base_config(base: Path) -> dict[str, Any]:
    return json.loads((base / "config.json").read_text())


def consolidated_folder(run_dir: Path, step: int = 10) -> Path:
    folder = run_dir / "checkpoints" / f"checkpoint_{step:06d}" / "consolidated"
    folder.mkdir(parents=True)
    return folder


def trained_lora_model(base: Path, seed: int = 5) -> torch.nn.Module:
    """The base LM wrapped in LoRA adapters with seeded random values (as if trained)."""
    lm_kwargs = {key: value for key, value in base_config(base).items() if key not in BASE_NAMES}
    lm = loaders.get_moshi_lm(base / BASE_NAMES["moshi_name"], lm_kwargs | LORA_ARGS, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in lm.named_parameters():
            if ".lora_" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return lm


def write_kyutai_lora(run_dir: Path, base: Path) -> Path:
    """kyutai's LoRA checkpoint; returns its `checkpoint_000010/` folder."""
    folder = consolidated_folder(run_dir)
    lm = trained_lora_model(base)
    save_file({key: value for key, value in lm.state_dict().items() if ".lora_" in key}, folder / "lora.safetensors")
    (folder / "config.json").write_text(json.dumps(base_config(base) | LORA_ARGS, indent=4))
    return folder.parent


def write_kyutai_full(run_dir: Path, base: Path, lora_in_config: bool = False) -> Path:
    """kyutai's full checkpoint (the adapters merged into the weights); `lora_in_config`: trained with LoRA but saved
    whole (`save_adapters: false`), so config.json still says `lora: true`."""
    folder = consolidated_folder(run_dir)
    lm = trained_lora_model(base)
    replace_lora_with_linear(lm)
    save_file({key: value.contiguous() for key, value in lm.state_dict().items()}, folder / "consolidated.safetensors")
    config = base_config(base) | LORA_ARGS | {"lora": lora_in_config}
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    return folder.parent


def users_ttt_section() -> dict[str, Any]:
    """Their `ttt:` section as their Checkpointer writes it: every key of their `TTTArgs`."""
    import yaml

    section = yaml.safe_load((USER_TTT_DIR / USERS_CASE / "train.yaml").read_text())["ttt"]
    return FINETUNE_DEFAULTS | TRAINING_ONLY_VALUES | section


def write_users_ttt(run_dir: Path, base: Path, moshi_paths: dict[str, Any]) -> Path:
    """The TTT fork's checkpoint; returns its `consolidated/` folder."""
    folder = consolidated_folder(run_dir)
    shutil.copy(USER_TTT_DIR / USERS_CASE / "ttt_adapters.safetensors", folder / "lora.safetensors")
    config = base_config(base) | {"lora": False, "lora_rank": 64, "lora_scaling": 2.0}
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    paths = {"hf_repo_id": None, "mimi_path": None, "moshi_path": None, "tokenizer_path": None, "config_path": None}
    training = {
        "data": {"train_data": "/data/train.jsonl", "eval_data": "", "shuffle": False}, "run_dir": str(run_dir),
        "moshi_paths": paths | moshi_paths, "first_codebook_weight_multiplier": 1.0, "text_padding_weight": 0.5,
        "optim": {"lr": 1e-4, "weight_decay": 0.1, "pct_start": 0.05}, "seed": 0, "num_microbatches": 1,
        "duration_sec": 10, "batch_size": 1, "max_steps": 10, "log_freq": 1, "ckpt_freq": 10, "save_adapters": True,
        "do_ckpt": True, "num_ckpt_keep": 3, "eval_freq": 0, "do_eval": False, "gradient_checkpointing": True,
        "world_size": 1, "wandb": {"project": None, "offline": False, "key": None, "run_name": None},
        "lora": {"enable": False, "rank": 64, "scaling": 2.0, "ft_embed": False}, "full_finetuning": False,
        "ttt": users_ttt_section(), "paper_metrics": {}, "param_dtype": "float32", "overwrite_run_dir": False,
        "rope_continuous": False, "rope_reset_on_new_file": True, "resume_from": None, "reset_optimizer": False,
        "reset_step": False,
    }
    (folder / "training_config.json").write_text(json.dumps(training, indent=4, default=str))
    return folder

"""Command-line flags naming a Moshi checkpoint, with upstream's spelling, for `moshi.run_inference` and `moshi.server`.

`add_checkpoint_flags(parser)` adds `--hf-repo`, `--moshi-weight`, `--mimi-weight`, `--tokenizer`, `--lora-weight`,
`--ttt-weights`, `--mimi-config` and a config flag (upstream's server calls it `--config-path`, its offline inference
`--config` / `--lm-config`); `add_runtime_flags(parser)` adds `--device`, `--half`, `--cfg-coef` and `--no_fuse_lora`.
`checkpoint_from_flags(args)` resolves the files into a `CheckpointInfo`; `device_from_flags(args)` checks `--device`.
Errors in `CHECKPOINT_ERRORS` are what bad flags or files raise while resolving and loading a checkpoint: commands
report them as one `error:` line.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from safetensors import SafetensorError

from .loaders import DEFAULT_REPO, CheckpointInfo

CHECKPOINT_ERRORS: tuple[type[Exception], ...] = (
    OSError, ValueError, TypeError, KeyError, NotImplementedError, RuntimeError, SafetensorError)
"""Missing or unreadable files, configs that do not build a model, weights that do not fit it, an unusable device."""


def add_checkpoint_flags(parser: argparse.ArgumentParser, config_flags: Sequence[str] = ("--config-path",)) -> None:
    """Flags that locate the checkpoint files; each local file overrides the one the repository names."""
    parser.add_argument("--hf-repo", default=DEFAULT_REPO,
                        help="Hugging Face repository or local folder with config.json (default: %(default)s)")
    parser.add_argument("--moshi-weight", help="local LM weights (safetensors)")
    parser.add_argument("--mimi-weight", help="local Mimi weights (safetensors)")
    parser.add_argument("--tokenizer", help="local sentencepiece text tokenizer")
    parser.add_argument("--lora-weight", help="local LoRA adapter weights (safetensors)")
    parser.add_argument("--ttt-weights", help="local TTT layer weights (safetensors), merged with the LM weights")
    parser.add_argument(*config_flags, dest="config_path", help="local config.json (LM arguments and file names)")
    parser.add_argument("--mimi-config", help="local Mimi config (JSON) for a codec other than the released one")


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """Where and how the models run."""
    parser.add_argument("--device", default="cuda", help="torch device (default: %(default)s)")
    parser.add_argument("--half", action="store_const", const=torch.float16, default=torch.bfloat16, dest="dtype",
                        help="float16 instead of bfloat16 (for older GPUs)")
    parser.add_argument("--cfg-coef", type=float, default=1.0,
                        help="classifier-free guidance coefficient; this fork supports only 1")
    parser.add_argument("--no_fuse_lora", action="store_false", dest="fuse_lora",
                        help="keep LoRA adapters separate instead of merging them into the linear layers")


def checkpoint_from_flags(args: argparse.Namespace) -> CheckpointInfo:
    """The checkpoint the parsed flags name."""
    return CheckpointInfo.from_hf_repo(
        args.hf_repo, moshi_weights=args.moshi_weight, mimi_weights=args.mimi_weight, tokenizer=args.tokenizer,
        config_path=args.config_path, lora_weights=args.lora_weight, ttt_weights=args.ttt_weights,
        mimi_config_path=args.mimi_config,
    )


def device_from_flags(args: argparse.Namespace) -> torch.device:
    """The `--device`, refused with a clear message when it cannot run here (no CUDA GPU, unknown name)."""
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ValueError(f"--device {args.device}: not a torch device ({error})") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA GPU is available here (use --device cpu)")
    return device


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return "warning: " + " ".join(str(message).split()) + "\n"


def warnings_on_one_line() -> None:
    """Show Python warnings as one `warning:` line each, as a command's own messages (not file and source lines)."""
    warnings.formatwarning = _one_line_warning


def check_cfg_coef(value: float) -> None:
    """Classifier-free guidance needs a conditioned model, which this fork does not support."""
    if value != 1.0:
        raise ValueError(f"--cfg-coef {value}: classifier-free guidance is not supported by this fork (use 1)")

"""The command-line flags every evaluation command shares: the checkpoint (`--hf-repo`, `--moshi-weights`, ...), where
and in which dtype it runs (`--device`, `--dtype`), and the codes cache (`--cache-dir`, `--no-cache`).

The parsers use `argument_default=argparse.SUPPRESS`: a flag that was not given is absent from the namespace, so the
settings of a config file are only replaced by the flags actually given.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .models import DTYPES, ModelSpec


def add_model_arguments(parser: argparse.ArgumentParser, *, ttt_config: bool = False) -> None:
    """The `model` group; `ttt_config`: with `--ttt-config` (a YAML's `ttt:` section replaces the LM config's)."""
    model = parser.add_argument_group("model")
    model.add_argument("--hf-repo", help="Hugging Face repo of the checkpoint (e.g. kyutai/moshiko-pytorch-bf16), or "
                                         "a local folder with the same layout")
    model.add_argument("--moshi-weights", help="LM weights (local file or hf://repo/file)")
    model.add_argument("--lm-config", help="LM config.json")
    model.add_argument("--mimi-weights", help="Mimi weights")
    model.add_argument("--mimi-config", help="Mimi config JSON")
    model.add_argument("--tokenizer", help="text tokenizer (not used for scoring; avoids a download)")
    model.add_argument("--ttt-weights", help="separate TTT weights file")
    if ttt_config:
        model.add_argument("--ttt-config", help="YAML/JSON whose `ttt:` section sets the TTT layers, e.g. a "
                                                "moshi-finetune training YAML (replaces the LM config's `ttt`)")
    model.add_argument("--lora-weights", help="LoRA weights file")
    model.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    model.add_argument("--dtype", choices=("auto", *DTYPES), help="LM dtype (default auto)")


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The checkpoint the model flags name (a flag not given: None)."""
    return ModelSpec(**{field.name: getattr(args, field.name, None) for field in dataclasses.fields(ModelSpec)})


def add_codes_cache_arguments(group: Any) -> None:
    """`--cache-dir` and `--no-cache` in `group` (an argument group of the command's data)."""
    group.add_argument("--cache-dir", help="codes cache folder (default ~/.cache/moshi_eval/librilight_codes)")
    group.add_argument("--no-cache", dest="use_cache", action="store_false", help="do not read or write the cache")

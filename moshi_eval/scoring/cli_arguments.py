"""What the evaluation commands add to `moshi.models.model_flags`: the codes cache flags (`--cache-dir`, `--no-cache`)
and the model request of their settings.

The parsers use `argument_default=argparse.SUPPRESS`: a flag that was not given is absent from the namespace, so the
settings of a config file are only replaced by the flags actually given.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from moshi.models import model_flags
from moshi.models.model_flags import ModelRequest


def add_codes_cache_arguments(group: Any) -> None:
    """`--cache-dir` and `--no-cache` in `group` (an argument group of the command's data)."""
    group.add_argument("--cache-dir", help="codes cache folder (default ~/.cache/moshi_eval/librilight_codes)")
    group.add_argument("--no-cache", dest="use_cache", action="store_false", help="do not read or write the cache")


def model_request(args: argparse.Namespace, config: Any) -> ModelRequest:
    """The model the flags name, with the `context` and `rope_max_period` of the evaluation's settings (a flag or a
    config file's key; the results' `config` records them)."""
    request = ModelRequest.from_args(args, model_flags.OURS)
    return dataclasses.replace(request, context=config.context, rope_max_period=config.rope_max_period)

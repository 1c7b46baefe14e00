"""Naming a model on a command line: the flags `moshi.server`, `moshi.run_inference`, `moshi_eval.librilight` and
`moshi_eval.paper_metrics` share, and what they lead to.

- `add_model_flags(parser, spelling, ...)`: the checkpoint (`--hf-repo`, `--checkpoint`, the files), its changes
  (`--ttt-config`, `--context`, `--rope-max-period`, `--no-fuse-lora`), `--device` and `--dtype` / `--half`. Both
  spellings of the file flags are accepted everywhere (`--moshi-weight` / `--moshi-weights`, `--mimi-weight(s)`,
  `--lora-weight(s)`, `--config-path` / `--lm-config`); `--help` shows upstream's (`UPSTREAM`, the server and the
  offline inference) or ours (`OURS`, the evaluations). No flag has a default in the namespace unless the parser sets
  one, so parsers built with `argument_default=argparse.SUPPRESS` see only the flags given.
- `ModelRequest`: what the flags name (recorded in results as `model.source`); `check_files` checks local paths before
  anything is loaded; `resolve` finds the files (`ResolvedModel`: the `CheckpointInfo` with the request's changes, and
  one line per change of the model's function), which then loads the LM, Mimi and the text tokenizer.
- `resolve_device` (cuda when a GPU is visible, else cpu; `cuda` is `cuda:<local rank>` under torchrun) and
  `resolve_dtype` (`auto`: bfloat16 on a GPU, float32 elsewhere).
- `add_sampling_flags` / `sampling_settings`: `--temp`, `--temp-text`, `--top-k`, `--top-k-text`, `--cfg-coef` for the
  commands that generate; the checkpoint's `lm_gen_config` is the default.
- `EXPECTED_ERRORS`, `report_error`, `print_note`, `warnings_on_one_line`: a mistake is one `error:` line on stderr
  (exit status 2), a note or a warning one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .loaders import (
    DEFAULT_LM_CONFIG,
    CheckpointInfo,
    finetune_checkpoint_folder,
    read_ttt_config,
    require_repository,
    require_safetensors_name,
)

UPSTREAM = "upstream"
OURS = "ours"
_FILE_FLAGS = {  # dest: (upstream's spelling, ours)
    "moshi_weights": ("--moshi-weight", "--moshi-weights"),
    "mimi_weights": ("--mimi-weight", "--mimi-weights"),
    "lora_weights": ("--lora-weight", "--lora-weights"),
    "lm_config": ("--config-path", "--lm-config"),
    "fuse_lora": ("--no_fuse_lora", "--no-fuse-lora"),
}
_SINGLE_FLAGS = {"hf_repo": "--hf-repo", "checkpoint": "--checkpoint", "mimi_config": "--mimi-config",
                 "tokenizer": "--tokenizer", "ttt_config": "--ttt-config", "ttt_weights": "--ttt-weights",
                 "context": "--context", "rope_max_period": "--rope-max-period"}
_WEIGHT_FIELDS = ("moshi_weights", "mimi_weights", "lora_weights", "ttt_weights")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXIT_ERROR = 2
DEFAULT_ROPE_MAX_PERIOD = 10_000.0
"""`LMModel`'s RoPE max_period when its config names none."""

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, NotImplementedError, SafetensorError)
"""What a user's flags and files can cause while a model is named, found and loaded: missing or unreadable files and
repositories, configs and weights that do not fit, unsupported configurations, an unusable device."""


def add_model_flags(parser: argparse.ArgumentParser, spelling: str, default_repo: str | None = None,
                    config_flags: tuple[str, ...] | None = None) -> None:
    """The model flags in a `model` group of `parser`, `--help` showing the `spelling` (`UPSTREAM` or `OURS`) of the
    file flags; `config_flags` replaces the shown config flag (upstream's inference: `--config`, `--lm-config`).
    `default_repo` is only named in the help: `ModelRequest.from_args` applies it."""
    shown = 0 if spelling == UPSTREAM else 1
    group = parser.add_argument_group("model")
    repo_help = "Hugging Face repository of the checkpoint, or a local folder with the same layout"
    group.add_argument("--hf-repo", help=repo_help + (f" (default: {default_repo})" if default_repo else ""))
    group.add_argument("--checkpoint", help="a moshi-finetune checkpoint folder (checkpoint_NNNNNN/ or its "
                                            "consolidated/): config.json, lora.safetensors or "
                                            "consolidated.safetensors, and training_config.json when written")
    helps = {"moshi_weights": "LM weights (safetensors; a local file or hf://owner/repo/file)",
             "mimi_weights": "Mimi weights (safetensors)",
             "lora_weights": "LoRA adapter weights (safetensors)",
             "lm_config": "LM config.json (LM arguments and file names)"}
    for dest, help_text in helps.items():
        spellings = _FILE_FLAGS[dest]
        names = (config_flags or spellings[shown:shown + 1]) if dest == "lm_config" else spellings[shown:shown + 1]
        group.add_argument(*names, dest=dest, help=help_text)
        group.add_argument(*[name for name in spellings if name not in names], dest=dest, help=argparse.SUPPRESS)
    group.add_argument("--mimi-config", help="Mimi config JSON, for a codec other than the released one")
    group.add_argument("--tokenizer", help="sentencepiece text tokenizer")
    group.add_argument("--ttt-config", help="TTT layers: a training YAML or training_config.json (its ttt: section), "
                                            "or a file holding such a section; replaces the config's")
    group.add_argument("--ttt-weights", help="TTT layer weights (safetensors), merged over the LM weights")
    group.add_argument(_FILE_FLAGS["fuse_lora"][shown], dest="fuse_lora", action="store_false",
                       help="keep the LoRA adapters apart instead of merging them into the linear layers")
    group.add_argument(_FILE_FLAGS["fuse_lora"][1 - shown], dest="fuse_lora", action="store_false",
                       help=argparse.SUPPRESS)
    group.add_argument("--context", type=int, help="attention context in steps, instead of the checkpoint's (changes "
                                                   "the model's function)")
    group.add_argument("--rope-max-period", type=float, help="RoPE max_period of the main transformer, instead of "
                                                             "the checkpoint's (changes the model's function)")
    group.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when a GPU is visible, else cpu)")
    dtype_help = "weights' dtype (default auto: bfloat16 on a GPU, float32 elsewhere)"
    half_help = "float16 weights (for GPUs without bfloat16); default: bfloat16 on a GPU, float32 elsewhere"
    group.add_argument("--dtype", choices=("auto", *DTYPES), help=dtype_help if spelling == OURS else argparse.SUPPRESS)
    group.add_argument("--half", dest="dtype", action="store_const", const="float16",
                       help=half_help if spelling == UPSTREAM else argparse.SUPPRESS)


@dataclasses.dataclass(frozen=True)
class ModelRequest:
    """What the model flags name; a field not given is None. `spelling` only chooses how messages name the flags."""

    hf_repo: str | None = None
    checkpoint: str | None = None
    moshi_weights: str | None = None
    lm_config: str | None = None
    mimi_weights: str | None = None
    mimi_config: str | None = None
    tokenizer: str | None = None
    lora_weights: str | None = None
    ttt_config: str | None = None
    ttt_weights: str | None = None
    fuse_lora: bool = True
    context: int | None = None
    rope_max_period: float | None = None
    spelling: str = OURS

    @classmethod
    def from_args(cls, args: argparse.Namespace, spelling: str, default_repo: str | None = None) -> ModelRequest:
        """The request of parsed flags (absent ones included); `default_repo` is the repository when neither
        `--hf-repo` nor `--checkpoint` is given (server and inference: upstream's; the evaluations: none)."""
        values = {field.name: getattr(args, field.name, None) for field in dataclasses.fields(cls)
                  if field.name not in ("fuse_lora", "spelling")}
        request = cls(**values, fuse_lora=getattr(args, "fuse_lora", True), spelling=spelling)
        if request.hf_repo is None and request.checkpoint is None and default_repo is not None:
            request = dataclasses.replace(request, hf_repo=default_repo)
        return request

    def flag(self, name: str) -> str:
        """How messages name the flag of field `name` (in this request's spelling)."""
        if name in _FILE_FLAGS:
            return _FILE_FLAGS[name][0 if self.spelling == UPSTREAM else 1]
        return _SINGLE_FLAGS[name]

    def describe(self) -> dict[str, Any]:
        """The fields given (results' `model.source`)."""
        described = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                     if field.name not in ("fuse_lora", "spelling") and getattr(self, field.name) is not None}
        return described | ({} if self.fuse_lora else {"fuse_lora": False})

    def check_files(self) -> None:
        """Before anything is loaded: a path-like `--hf-repo` and `--checkpoint` are folders, every local file exists,
        the numbers are in range (a FileNotFoundError or ValueError naming the flag)."""
        if self.hf_repo is not None:
            try:
                require_repository(self.hf_repo)
            except OSError as error:
                raise type(error)(f"{self.flag('hf_repo')} {error}") from error
        if self.checkpoint is not None:
            finetune_checkpoint_folder(self.checkpoint)
        for name in ("moshi_weights", "lm_config", "mimi_weights", "mimi_config", "tokenizer", "lora_weights",
                     "ttt_config", "ttt_weights"):
            value = getattr(self, name)
            if value is not None and name in _WEIGHT_FIELDS:
                require_safetensors_name(value, self.flag(name))
            if value is not None and not value.startswith("hf://"):
                path = Path(value.removeprefix("file://"))
                if not path.is_file():
                    problem = "is a folder, not a file" if path.is_dir() else "file not found"
                    raise FileNotFoundError(f"{self.flag(name)} {value}: {problem}")
        if self.context is not None and self.context < 1:
            raise ValueError(f"--context must be at least 1 step, got {self.context}")
        if self.rope_max_period is not None and not self.rope_max_period > 0:
            raise ValueError(f"--rope-max-period must be positive, got {self.rope_max_period}")

    def resolve(self) -> ResolvedModel:
        """The files and configuration the request names, with its changes applied (nothing is loaded yet)."""
        files = {"moshi_weights": self.moshi_weights, "mimi_weights": self.mimi_weights, "tokenizer": self.tokenizer,
                 "mimi_config_path": self.mimi_config, "lora_weights": self.lora_weights,
                 "ttt_weights": self.ttt_weights}
        if self.checkpoint is not None:
            info = CheckpointInfo.from_checkpoint(self.checkpoint, hf_repo=self.hf_repo, config_path=self.lm_config,
                                                  **files)
        elif self.hf_repo is not None:
            info = CheckpointInfo.from_hf_repo(self.hf_repo, config_path=self.lm_config, **files)
        elif self.moshi_weights is not None:
            info = CheckpointInfo.from_files(config_path=self.lm_config, **files)
        else:
            raise ValueError(f"no model given: name it with {self.flag('hf_repo')}, {self.flag('checkpoint')}, or "
                             f"{self.flag('moshi_weights')} (with {self.flag('lm_config')})")
        info, changes = self._changed(info)
        return ResolvedModel(self, info, changes)

    def _changed(self, info: CheckpointInfo) -> tuple[CheckpointInfo, list[str]]:
        """`info` with the request's TTT config, context and RoPE period, and one line per change of the function."""
        config = DEFAULT_LM_CONFIG if info.lm_config is None else info.lm_config
        overrides: dict[str, Any] = {}
        changes = []
        if self.ttt_config is not None:
            overrides["ttt"] = read_ttt_config(self.ttt_config)
        if self.context is not None:
            overrides["context"] = self.context
            if self.context != config.get("context"):
                changes.append(f"--context {self.context} changes the model's function: its attention looks back "
                               f"{self.context} step(s) instead of the {config.get('context') or 'unbounded'} it was "
                               "trained with (layers whose context a TTT config sets keep theirs)")
        if self.rope_max_period is not None:
            trained = config.get("max_period", DEFAULT_ROPE_MAX_PERIOD)
            overrides["max_period"] = self.rope_max_period
            overrides["depformer_max_period"] = config.get("depformer_max_period", trained)
            if self.rope_max_period != trained:
                changes.append(f"--rope-max-period {self.rope_max_period:g} changes the model's function: the main "
                               f"transformer's RoPE max_period is {self.rope_max_period:g} instead of the {trained:g} "
                               "it was trained with")
        return (info.with_lm_overrides(**overrides) if overrides else info), changes


@dataclasses.dataclass
class ResolvedModel:
    """A request's checkpoint, ready to load: `changes` are the lines that say how the request changes the model's
    function (print them once)."""

    request: ModelRequest
    info: CheckpointInfo
    changes: list[str]

    def load_lm(self, device: torch.device | str, dtype: torch.dtype) -> Any:
        """The LM in eval mode (LoRA adapters fused unless the request keeps them apart)."""
        return self.info.get_moshi(device=device, dtype=dtype, fuse_lora=self.request.fuse_lora).eval()

    def load_mimi(self, device: torch.device | str, purpose: str = "audio") -> Any:
        """Mimi, set to the LM's codebooks; `purpose` says in the error what needs it when no weights are named."""
        if self.info.mimi_weights is None:
            request = self.request
            raise ValueError(f"{purpose} needs Mimi: name its weights with {request.flag('mimi_weights')} (or a "
                             f"repository with {request.flag('hf_repo')})")
        return self.info.get_mimi(device=device)

    def load_tokenizer(self) -> Any:
        if self.info.tokenizer is None:
            raise ValueError(f"the text needs the tokenizer: name it with --tokenizer (or a repository with "
                             f"{self.request.flag('hf_repo')})")
        return self.info.get_text_tokenizer()


def open_model(request: ModelRequest, requested_device: str | None, local_rank: int = 0,
               announce: bool = True) -> tuple[ResolvedModel, str]:
    """What every command does before loading: check the request's files, choose the device (made the current one;
    said once, when `announce`, if no `--device` was given), find the checkpoint's files (the changes of the model's
    function said once when `announce`)."""
    request.check_files()
    device = resolve_device(requested_device, local_rank)
    select_device(device)
    resolved = request.resolve()
    if announce:
        for note in ([default_device_note(device)] if requested_device is None else []) + resolved.changes:
            print_note(note)
    return resolved, device


def resolve_device(requested: str | None, local_rank: int = 0, cuda_count: int | None = None) -> str:
    """`requested` (`cpu`, `cuda`, `cuda:1`, ...) as an explicit device: `cuda` is `cuda:<local rank>` (modulo the
    visible GPUs), as `torch.cuda.set_device` needs; None is that device when a GPU is visible, else `cpu`. A device
    that cannot run here is a ValueError naming it. `cuda_count` defaults to `torch.cuda.device_count()`."""
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    if requested is None:
        return f"cuda:{local_rank % count}" if count else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ValueError(f"--device {requested!r} is not a device (use cpu, cuda or cuda:<index>)") from error
    if device.type != "cuda":
        return str(device)
    if count == 0:
        raise ValueError(f"--device {requested}: no CUDA GPU is visible here (use --device cpu)")
    index = local_rank % count if device.index is None else device.index
    if index >= count:
        raise ValueError(f"--device {requested}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})")
    return f"cuda:{index}"


def default_device_note(device: str) -> str:
    """What to say once when no `--device` was given."""
    why = "a GPU is visible" if device.startswith("cuda") else "no CUDA GPU is visible"
    return f"running on {device} ({why}; choose with --device)"


def select_device(device: str) -> None:
    """Make a CUDA device the current one (kernels and CUDA graphs are launched there); nothing for other devices."""
    parsed = torch.device(device)
    if parsed.type == "cuda":
        torch.cuda.set_device(parsed)


def resolve_dtype(name: str | None, device: str | torch.device) -> torch.dtype:
    """`auto` (or None): bfloat16 on a GPU, float32 elsewhere; else the named dtype."""
    if name in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


# ---------------------------------------------------------------------------------------------------------------------
# Sampling, for the commands that generate

_SAMPLING_FLAGS = {"temp": float, "temp_text": float, "top_k": int, "top_k_text": int}


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    """`--temp`, `--temp-text`, `--top-k`, `--top-k-text` (each replacing the checkpoint's `lm_gen_config` value) and
    upstream's `--cfg-coef` (1 only)."""
    group = parser.add_argument_group("sampling (default: the checkpoint's lm_gen_config, else LMGen's defaults)")
    group.add_argument("--temp", type=float, help="temperature of the audio tokens")
    group.add_argument("--temp-text", type=float, help="temperature of the text tokens")
    group.add_argument("--top-k", type=int, help="top-k of the audio tokens")
    group.add_argument("--top-k-text", type=int, help="top-k of the text tokens")
    group.add_argument("--cfg-coef", type=float, default=1.0,
                       help="classifier-free guidance coefficient; this fork supports only 1")


def sampling_settings(args: argparse.Namespace, info: CheckpointInfo) -> dict[str, Any]:
    """`LMGen` keyword arguments: the checkpoint's `lm_gen_config`, the sampling flags given replacing its values."""
    if getattr(args, "cfg_coef", 1.0) != 1.0:
        raise ValueError(f"--cfg-coef {args.cfg_coef}: classifier-free guidance is not supported by this fork (use 1)")
    given = {name: getattr(args, name) for name in _SAMPLING_FLAGS if getattr(args, name, None) is not None}
    for name, value in given.items():
        if value < (1 if name.startswith("top_k") else 0):
            raise ValueError(f"--{name.replace('_', '-')} must be {'at least 1' if 'top_k' in name else '>= 0'}, "
                             f"got {value}")
    return dict(info.lm_gen_config) | given


# ---------------------------------------------------------------------------------------------------------------------
# Messages on stderr


def error_line(error: BaseException) -> str:
    """The error's message on one line; an `OSError` from the system names its file first."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    parts = [part.strip() for part in text.splitlines() if part.strip()]
    line = parts[0] if parts else type(error).__name__
    for part in parts[1:]:
        line += (" " if line.endswith(":") else "; ") + part
    return line


def report_error(error: BaseException) -> int:
    """Print `error: <message>` on stderr; the exit status of a command that failed this way (2)."""
    print(f"error: {error_line(error)}", file=sys.stderr, flush=True)
    return EXIT_ERROR


def print_note(message: str) -> None:
    """One `note: ...` line on stderr."""
    print(f"note: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"warning: {' '.join(str(message).split())}\n"


def warnings_on_one_line() -> None:
    """Show Python warnings as one `warning:` line each, as the command's own messages (not file and source lines)."""
    warnings.formatwarning = _one_line_warning

"""Finding and loading Moshi checkpoints: the LM, the Mimi codec and the text tokenizer.

A checkpoint repository (on the Hugging Face Hub or a local folder) holds a `config.json` with the LM keyword
arguments plus a few file-name and usage keys, the LM weights, the Mimi weights and a sentencepiece model.
`CheckpointInfo.from_hf_repo` resolves those files; `get_moshi_lm` / `get_mimi` build the models and load the weights.

File references accepted everywhere: a local path, `file://<path>`, or `hf://<owner>/<repo>/<path in repo>`.
Weights are read from safetensors files only (no pickle): `.pt` / `.bin` / `.ckpt` files are refused.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from huggingface_hub import hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..modules.lora import replace_all_linear_with_lora, replace_lora_with_linear
from .compression import MimiModel
from .lm import LMModel

try:
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
except ImportError:  # huggingface_hub < 0.23
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

SAMPLE_RATE = 24000
FRAME_RATE = 12.5

TEXT_TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
MOSHI_NAME = "model.safetensors"
MOSHI_Q8_NAME = "model.q8.safetensors"
MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
DEFAULT_REPO = "kyutai/moshiko-pytorch-bf16"

SAFETENSORS_SUFFIXES = (".safetensors", ".sft", ".sfts")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

_MIMI_WIDTH = 512
DEFAULT_MIMI_CONFIG: dict[str, Any] = {
    "sample_rate": SAMPLE_RATE,
    "channels": 1,
    "frame_rate": FRAME_RATE,
    "seanet": {
        "channels": 1,
        "dimension": _MIMI_WIDTH,
        "causal": True,
        "n_filters": 64,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    },
    "quantizer": {
        "dimension": 256,
        "n_q": 32,
        "bins": 2048,
        "input_dimension": _MIMI_WIDTH,
        "output_dimension": _MIMI_WIDTH,
    },
    "transformer": {
        "d_model": _MIMI_WIDTH,
        "num_heads": 8,
        "num_layers": 8,
        "causal": True,
        "layer_scale": 0.01,
        "context": 250,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 2048,
        "input_dimension": _MIMI_WIDTH,
        "output_dimensions": [_MIMI_WIDTH],
    },
}
"""The Mimi codec of the released Moshi models (32 codebooks available, Moshi uses 8)."""

DEFAULT_LM_CONFIG: dict[str, Any] = {
    "dim": 4096,
    "text_card": 32000,
    "existing_text_padding_id": 3,
    "n_q": 16,
    "dep_q": 8,
    "card": 2048,
    "num_heads": 32,
    "num_layers": 32,
    "hidden_scale": 4.125,
    "causal": True,
    "layer_scale": None,
    "context": 3000,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_dim": 1024,
    "depformer_dim_feedforward": 4224,
    "depformer_num_heads": 16,
    "depformer_num_layers": 6,
    "depformer_layer_scale": None,
    "depformer_multi_linear": True,
    "depformer_context": 8,
    "depformer_max_period": 10000,
    "depformer_gating": "silu",
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}
"""LM keyword arguments of the released 7B moshiko / moshika models (used when a repository has no config.json)."""

# Names under which upstream exposes the two default configurations; some scripts import them.
_lm_kwargs = DEFAULT_LM_CONFIG
_mimi_config = DEFAULT_MIMI_CONFIG

_LORA_DEFAULT_RANK = 128
_LORA_DEFAULT_SCALING = 2.0


def default_lm_config() -> dict[str, Any]:
    """A fresh copy of the 7B LM configuration."""
    return copy.deepcopy(DEFAULT_LM_CONFIG)


def default_mimi_config() -> dict[str, Any]:
    """A fresh copy of the released Mimi configuration."""
    return copy.deepcopy(DEFAULT_MIMI_CONFIG)


# ---------------------------------------------------------------------------------------------------------------------
# Resolving file references


def hf_get(
    filename: str | Path,
    hf_repo: str | Path | None = None,
    check_local_file_exists: bool = False,
    revision: str | None = None,
) -> Path:
    """Resolve a file reference to a local path, downloading from the Hugging Face Hub when needed.

    - a `Path` object, `file://<path>`: that local path;
    - `hf://<owner>/<repo>/<path in repo>`: downloaded from that repository;
    - a plain string with `hf_repo` given: `<path in repo>` of `hf_repo`, which is either a local folder or a Hub
      repository id (with `check_local_file_exists`, an existing local file of that name wins);
    - a plain string without `hf_repo`: a local path.
    """
    if isinstance(filename, Path):
        return filename
    if filename.startswith("hf://"):
        repo_id, path_in_repo = _split_hf_url(filename)
        return _download(repo_id, path_in_repo, revision)
    if filename.startswith("file://"):
        return Path(filename.removeprefix("file://"))
    if hf_repo is None:
        return Path(filename)
    if check_local_file_exists and Path(filename).exists():
        return Path(filename)
    if _is_local_folder(hf_repo):
        return Path(hf_repo) / filename
    return _download(str(hf_repo), filename, revision)


def _split_hf_url(url: str) -> tuple[str, str]:
    parts = url.removeprefix("hf://").split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"expected hf://<owner>/<repo>/<path in repo>, got {url!r}")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:])


def _is_local_folder(hf_repo: str | Path) -> bool:
    return Path(hf_repo).is_dir()


def looks_like_local_path(text: str) -> bool:
    """True for what a person types as a path rather than a Hub id `<owner>/<name>`: absolute, relative with `.` or
    `~`, backslashes, or more than one `/`."""
    return (text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1 or text.endswith("/")
            or os.path.isabs(text))


def _require_repository(hf_repo: str | Path) -> None:
    """A repository that looks like a local path must be a folder (it is never a Hub id), so a typo fails at once."""
    if _is_local_folder(hf_repo):
        return
    if Path(hf_repo).exists():
        raise NotADirectoryError(f"{hf_repo} is a file; give the checkpoint folder (holding config.json) or a Hugging "
                                 f"Face repository id such as {DEFAULT_REPO}")
    if isinstance(hf_repo, Path) or looks_like_local_path(hf_repo):
        raise FileNotFoundError(f"{hf_repo}: no such local folder (a Hugging Face repository id looks like "
                                f"{DEFAULT_REPO})")


def _download(repo_id: str, filename: str, revision: str | None) -> Path:
    return Path(hf_hub_download(repo_id, filename, revision=revision))


def _resolve_config_path(hf_repo: str | Path, revision: str | None) -> Path | None:
    """The repository's config.json, or None for a legacy repository that has none."""
    if _is_local_folder(hf_repo):
        path = Path(hf_repo) / "config.json"
        return path if path.exists() else None
    try:
        return _download(str(hf_repo), "config.json", revision)
    except LocalEntryNotFoundError:
        raise
    except EntryNotFoundError:
        return None


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _is_safetensors(path: str | Path) -> bool:
    """Whether `path` names a safetensors file by its suffix (upstream's name; training code imports it)."""
    return Path(path).suffix.lower() in SAFETENSORS_SUFFIXES


def _require_safetensors(path: str | Path, what: str) -> Path:
    """The path of an existing safetensors file; pickle-based checkpoints are refused (they can run code)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"{what} {path} is a pickle-based checkpoint ({suffix}); only safetensors files are loaded. "
            "Convert it once with `safetensors.torch.save_file(state_dict, 'weights.safetensors')` in a trusted "
            "session."
        )
    if not _is_safetensors(path):
        raise ValueError(f"{what} {path} is not a safetensors file (expected one of {', '.join(SAFETENSORS_SUFFIXES)})")
    return _require_file(path, what)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint repositories

_CONFIG_FILE_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "ttt_name")
_CONFIG_USAGE_KEYS = ("model_type", "lm_gen_config", "tts_config", "stt_config", "model_id")


@dataclass
class CheckpointInfo:
    """The files and configuration of one Moshi checkpoint.

    Attributes:
        moshi_weights: the LM weights (safetensors).
        mimi_weights: the Mimi codec weights (safetensors).
        tokenizer: the sentencepiece text tokenizer.
        lm_config: `LMModel` keyword arguments (with `lora*` / `ttt` keys when relevant); None means the 7B default.
        raw_config: config.json as read, including the file-name and usage keys.
        mimi_config: the Mimi configuration; None means the released codec.
        model_type: what the model is for (`moshi`, `hibiki`, `stt`, `tts`).
        lora_weights: optional LoRA adapter weights, loaded over the LM.
        lm_gen_config: default `LMGen` keyword arguments for this model.
        tts_config, stt_config: task-specific settings kept from config.json.
        model_id: provenance information (signature, epoch) kept from config.json.
        ttt_weights: optional test-time-training layer weights, merged into the LM weights.
    """

    moshi_weights: Path
    mimi_weights: Path
    tokenizer: Path
    lm_config: dict | None = None
    raw_config: dict | None = None
    mimi_config: dict | None = None
    model_type: str = "moshi"
    lora_weights: Path | None = None
    lm_gen_config: dict = field(default_factory=dict)
    tts_config: dict = field(default_factory=dict)
    stt_config: dict = field(default_factory=dict)
    model_id: dict = field(default_factory=dict)
    ttt_weights: Path | None = None

    @staticmethod
    def from_hf_repo(
        hf_repo: str | Path,
        moshi_weights: Path | str | None = None,
        mimi_weights: Path | str | None = None,
        tokenizer: Path | str | None = None,
        config_path: Path | str | None = None,
        mimi_config_path: Path | str | None = None,
        lora_weights: Path | str | None = None,
        revision: str | None = None,
        ttt_weights: Path | str | None = None,
    ) -> CheckpointInfo:
        """Resolve the files of a checkpoint repository (a Hub id such as `kyutai/moshiko-pytorch-bf16`, or a local
        folder with the same layout).

        Each explicit argument overrides the file named by config.json; overrides are file references (local path,
        `file://`, `hf://`). Without config.json the repository is taken to hold a released 7B Moshi.
        """
        _require_repository(hf_repo)
        if config_path is None:
            resolved_config = _resolve_config_path(hf_repo, revision)
        else:
            resolved_config = _require_file(hf_get(config_path, revision=revision), "config file")
        if resolved_config is None:
            warnings.warn(
                f"{hf_repo} has no config.json: assuming the released Moshi 7B configuration and file names",
                stacklevel=2,
            )
            raw_config = None
        else:
            raw_config = _read_json(resolved_config, "config file")
        lm_config, names, usage = _split_config(raw_config)

        def pick(override: Path | str | None, name: str | None) -> Path | None:
            if override is not None:
                return hf_get(override, revision=revision)
            if name is None:
                return None
            return hf_get(name, hf_repo, revision=revision)

        mimi_config_file = pick(mimi_config_path, names["mimi_config_name"])
        mimi_config = None if mimi_config_file is None else _read_json(mimi_config_file, "Mimi config file")
        return CheckpointInfo(
            moshi_weights=pick(moshi_weights, names["moshi_name"]),
            mimi_weights=pick(mimi_weights, names["mimi_name"]),
            tokenizer=pick(tokenizer, names["tokenizer_name"]),
            lm_config=lm_config,
            raw_config=raw_config,
            mimi_config=mimi_config,
            model_type=usage["model_type"],
            lora_weights=pick(lora_weights, names["lora_name"]),
            lm_gen_config=usage["lm_gen_config"],
            tts_config=usage["tts_config"],
            stt_config=usage["stt_config"],
            model_id=usage["model_id"],
            ttt_weights=pick(ttt_weights, names["ttt_name"]),
        )

    def get_moshi(
        self,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        load_weight: bool = True,
        fuse_lora: bool = False,
        **kwargs: Any,
    ) -> LMModel:
        """The LM with its weights (and LoRA / TTT weights when the checkpoint has them).

        `load_weight=False` builds the model without reading any weights: randomly initialised, or unallocated on
        `device="meta"`, as training code does before `load_state_dict(..., assign=True)`. Other keyword arguments
        go to `get_moshi_lm`, e.g. `lm_kwargs_overrides={"gradient_checkpointing": True, "lora": True}`.
        """
        model = get_moshi_lm(
            self.moshi_weights if load_weight else None,
            lm_kwargs=self.lm_config,
            device=device,
            dtype=dtype,
            lora_weights=self.lora_weights if load_weight else None,
            fuse_lora=fuse_lora,
            ttt_weights=self.ttt_weights if load_weight else None,
            **kwargs,
        )
        if self.model_type == "hibiki":
            _treat_early_end_of_text_as_padding(model)
        return model

    def get_mimi(self, device: torch.device | str = "cpu") -> MimiModel:
        """The Mimi codec, set to as many codebooks as one audio stream of the LM uses."""
        return get_mimi(self.mimi_weights, self.mimi_config, device=device, num_codebooks=self.mimi_num_codebooks)

    @property
    def mimi_num_codebooks(self) -> int:
        config = DEFAULT_LM_CONFIG if self.lm_config is None else self.lm_config
        num_codebooks = mimi_codebooks(config["n_q"], config["dep_q"])
        if self.tts_config.get("multistream"):
            num_codebooks //= 2
        return num_codebooks

    def get_text_tokenizer(self) -> sentencepiece.SentencePieceProcessor:
        """The sentencepiece tokenizer of the text stream."""
        path = _require_file(Path(self.tokenizer), "text tokenizer")
        return sentencepiece.SentencePieceProcessor(model_file=str(path))


def mimi_codebooks(n_q: int, dep_q: int) -> int:
    """Codebooks Mimi must produce for an LM with `n_q` audio streams, `dep_q` of them its own: the wider of the own
    and the user audio."""
    return max(dep_q, n_q - dep_q)


def read_config_file(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The JSON object in `path`; a missing file, invalid JSON or another JSON value raise an error naming the file."""
    return _read_json(Path(path), what)


def lm_kwargs_of(raw_config: dict[str, Any]) -> dict[str, Any]:
    """The `LMModel` keyword arguments of a checkpoint's config.json (without its file-name and usage keys)."""
    lm_config, _, _ = _split_config(raw_config)
    return lm_config or {}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    _require_file(path, what)
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not valid JSON: {error}") from error
    if isinstance(value, dict):
        return value
    raise ValueError(f"{what} {path} must hold a JSON object, got {type(value).__name__}")


def _split_config(raw_config: dict[str, Any] | None) -> tuple[dict | None, dict[str, str | None], dict[str, Any]]:
    """config.json -> (LM keyword arguments, file names, usage settings)."""
    names: dict[str, str | None] = {
        "moshi_name": MOSHI_NAME,
        "mimi_name": MIMI_NAME,
        "tokenizer_name": TEXT_TOKENIZER_NAME,
        "mimi_config_name": None,
        "lora_name": None,
        "ttt_name": None,
    }
    usage: dict[str, Any] = {
        "model_type": "moshi", "lm_gen_config": {}, "tts_config": {}, "stt_config": {}, "model_id": {},
    }
    if raw_config is None:
        return None, names, usage
    lm_config = dict(raw_config)
    for key in _CONFIG_FILE_KEYS:
        names[key] = lm_config.pop(key, names[key])
    for key in _CONFIG_USAGE_KEYS:
        usage[key] = lm_config.pop(key, usage[key])
    return lm_config, names, usage


def _treat_early_end_of_text_as_padding(model: LMModel) -> None:
    """Hibiki may sample end-of-text (id 2) before its input ends; its embedding is made that of padding (id 3)."""
    with torch.no_grad():
        model.text_emb.weight[2] = model.text_emb.weight[3]


# ---------------------------------------------------------------------------------------------------------------------
# The LM


def get_moshi_lm(
    filename: str | Path | None,
    lm_kwargs: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    lora_weights: str | Path | None = None,
    fuse_lora: bool = False,
    ttt_weights: str | Path | None = None,
    lm_kwargs_overrides: dict[str, Any] | None = None,
) -> LMModel:
    """Build an `LMModel` and load its weights.

    Args:
        filename: LM weights (safetensors); None gives a randomly initialised model on `device`.
        lm_kwargs: `LMModel` keyword arguments (default: the 7B configuration). `lora` (bool), `lora_rank` and
            `lora_scaling` wrap every linear layer in a LoRA adapter; `ttt` adds test-time-training layers.
        device, dtype: where and in which precision the model lives (integer tensors keep their type).
        lora_weights: adapter weights loaded after the base weights (requires `lora` in the config).
        fuse_lora: merge the adapters into plain linear layers after loading them.
        ttt_weights: weights of the TTT layers, merged with the base weights before loading (for a base checkpoint
            saved without them); on shared keys this file wins.
        lm_kwargs_overrides: keyword arguments replacing those of `lm_kwargs`.

    Weights are loaded strictly: missing or unexpected keys raise a ValueError listing them. Checkpoints saved by
    moshi-finetune's TTT integration are renamed to this package's layout, with a warning listing unmapped keys.
    """
    kwargs = _prepare_lm_kwargs(lm_kwargs, lm_kwargs_overrides)
    lora = bool(kwargs.pop("lora", False))
    lora_rank = kwargs.pop("lora_rank", _LORA_DEFAULT_RANK)
    lora_scaling = kwargs.pop("lora_scaling", _LORA_DEFAULT_SCALING)
    if lora_weights is not None and not lora:
        raise ValueError(f"LoRA weights {lora_weights} were given but the LM config does not enable `lora`")

    if filename is None:
        if ttt_weights is not None:
            raise ValueError(f"TTT weights {ttt_weights} were given without base LM weights to merge them with")
        model = LMModel(device=device, dtype=dtype, **kwargs)
    else:
        model = LMModel(device="meta", dtype=dtype, **kwargs)
        state = _read_lm_state(filename, ttt_weights, device)
        _load_strict(model, state, _describe_sources(filename, ttt_weights), dtype)

    if lora:
        _add_lora(model, lora_rank, lora_scaling, lora_weights, device, dtype, fuse_lora)
    if torch.device(device).type != "meta":
        _ensure_materialized(model, filename)
    model.eval()
    return model


def _prepare_lm_kwargs(lm_kwargs: dict[str, Any] | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    kwargs = default_lm_config() if lm_kwargs is None else dict(lm_kwargs)
    kwargs.update(overrides or {})
    if kwargs.get("conditioners") or kwargs.get("fuser"):
        raise NotImplementedError("conditioned Moshi models (`conditioners` / `fuser` in the config) are not supported")
    kwargs.pop("conditioners", None)
    kwargs.pop("depformer_causal", None)
    if "demux_second_stream" in kwargs:
        kwargs["demux_second_text_stream"] = kwargs.pop("demux_second_stream")
    return kwargs


_FINETUNE_TTT_MARKERS = (".seq_modeling_block.", ".original_layer.")


def _describe_sources(filename: str | Path, ttt_weights: str | Path | None) -> str:
    return f"{filename}" if ttt_weights is None else f"{filename} + TTT weights {ttt_weights}"


def _read_lm_state(
    filename: str | Path, ttt_weights: str | Path | None, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """The base weights, with the TTT weights file (if any) merged over them."""
    state = _read_weights(filename, "LM weights", device)
    if ttt_weights is not None:
        state.update(_read_weights(ttt_weights, "TTT weights", device))
    return state


def _read_weights(path: str | Path, what: str, device: torch.device | str) -> dict[str, torch.Tensor]:
    """A safetensors state dict; moshi-finetune TTT layouts are renamed to ours (see `moshi.modules.ttt_checkpoint`)."""
    state = _load_safetensors(path, what, device)
    if any(marker in key for key in state for marker in _FINETUNE_TTT_MARKERS):
        from ..modules.ttt_checkpoint import map_finetune_ttt_state_dict, warn_unmatched_ttt_keys

        state, unmatched = map_finetune_ttt_state_dict(state)
        warn_unmatched_ttt_keys(unmatched, source=str(path))
    return state


def _load_safetensors(path: str | Path, what: str, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The tensors of an existing safetensors file; a corrupt file is a ValueError naming it."""
    path = _require_safetensors(path, what)
    try:
        return load_file(path, device=str(device))
    except SafetensorError as error:
        raise ValueError(f"{what} {path} is not a readable safetensors file: {error}") from error


def _cast_floats_like(state: dict[str, torch.Tensor], model: nn.Module, dtype: torch.dtype) -> None:
    """Give each floating tensor the dtype its parameter has in `model` (`dtype` for keys the model converts)."""
    targets = {key: value.dtype for key, value in model.state_dict().items()}
    for key, value in state.items():
        if value.dtype.is_floating_point:
            target = targets.get(key, dtype)
            if target.is_floating_point and value.dtype != target:
                state[key] = value.to(target)


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, dtype: torch.dtype) -> None:
    """Load `state` into `model` (assigning the tensors), raising a ValueError that lists any key mismatch."""
    ttt_prefixes = _ttt_key_prefixes(model)
    _check_shapes(model, state, source)
    _cast_floats_like(state, model, dtype)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        missing_ttt = [key for key in result.missing_keys if key.startswith(ttt_prefixes)] if ttt_prefixes else []
        hint = ""
        if missing_ttt:
            hint = (f"the config has a `ttt` section but the weights lack its {len(missing_ttt)} TTT keys "
                    f"({_first_keys(missing_ttt)}): pass `ttt_weights` (or `ttt_name` in config.json) naming a "
                    "safetensors file that holds them")
        raise WeightsMismatchError(source, result.missing_keys, result.unexpected_keys, hint=hint)


def _ttt_key_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the model's test-time-training blocks (empty without a `ttt` config)."""
    if not getattr(model, "ttt_config", None):
        return ()
    from ..modules.ttt import TTTBlock

    return tuple(f"{name}." for name, module in model.named_modules() if isinstance(module, TTTBlock))


LISTED_KEYS = 10


def _first_keys(keys: list[str]) -> str:
    """The first `LISTED_KEYS` keys, then how many more."""
    shown = ", ".join(keys[:LISTED_KEYS])
    return shown + (f", ... ({len(keys) - LISTED_KEYS} more)" if len(keys) > LISTED_KEYS else "")


class WeightsMismatchError(ValueError):
    """Weights that do not fit the model. The message lists the first offending keys of each kind; `missing`,
    `unexpected` and `mismatched` (`(key, shape in the file, shape in the model)`) hold all of them."""

    def __init__(self, source: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 mismatched: Sequence[tuple[str, list[int], list[int]]] = (), hint: str = "") -> None:
        self.source = source
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [f"weights in {source} do not match the model:"]
        if self.mismatched:
            shapes = [f"{key} {file_shape} in the file, {model_shape} in the model"
                      for key, file_shape, model_shape in self.mismatched]
            lines.append(f"  shape mismatch ({len(shapes)}; is the config the one these weights were trained with?): "
                         f"{_first_keys(shapes)}")
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {_first_keys(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {_first_keys(self.unexpected)}")
        if hint:
            lines.append(f"  {hint}")
        super().__init__("\n".join(lines))


def _check_shapes(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """WeightsMismatchError listing the tensors of `state` whose shapes differ from the model's."""
    expected = model.state_dict()
    mismatched = [(key, list(value.shape), list(expected[key].shape)) for key, value in state.items()
                  if key in expected and value.shape != expected[key].shape]
    if mismatched:
        raise WeightsMismatchError(source, mismatched=mismatched)


def _add_lora(
    model: LMModel,
    rank: int,
    scaling: float,
    lora_weights: str | Path | None,
    device: torch.device | str,
    dtype: torch.dtype,
    fuse: bool,
) -> None:
    """Wrap every linear layer in a LoRA adapter, load the adapter weights when given, and fuse on request."""
    if lora_weights is None:
        replace_all_linear_with_lora(model, rank, scaling, device=device, dtype=dtype)
    else:
        replace_all_linear_with_lora(model, rank, scaling, device="meta", dtype=dtype)
        state = _load_safetensors(lora_weights, "LoRA weights", device)
        _check_shapes(model, state, f"LoRA file {lora_weights}")
        _cast_floats_like(state, model, dtype)
        result = model.load_state_dict(state, strict=False, assign=True)
        missing_adapters = [key for key in result.missing_keys if ".lora_A." in key or ".lora_B." in key]
        if missing_adapters or result.unexpected_keys:
            raise WeightsMismatchError(f"LoRA file {lora_weights}", missing_adapters, result.unexpected_keys)
    if fuse:
        replace_lora_with_linear(model)


def _ensure_materialized(model: nn.Module, filename: str | Path | None) -> None:
    """Every parameter and buffer must hold real data after loading (none left on the meta device)."""
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise RuntimeError(f"after loading {filename}, these tensors have no data (meta device): {', '.join(left)}")


# ---------------------------------------------------------------------------------------------------------------------
# Mimi


def get_mimi(
    filename: str | Path | None,
    mimi_config: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    num_codebooks: int = 8,
) -> MimiModel:
    """Build the Mimi codec (default: the released configuration), load its weights strictly and keep the first
    `num_codebooks` codebooks. `filename` None gives a randomly initialised codec."""
    config = default_mimi_config() if mimi_config is None else mimi_config
    model = MimiModel.from_config(config, device=device)
    if filename is not None:
        state = _load_safetensors(filename, "Mimi weights", device)
        _check_shapes(model, state, str(filename))
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise WeightsMismatchError(str(filename), result.missing_keys, result.unexpected_keys)
    model.set_num_codebooks(num_codebooks)
    model.eval()
    return model

"""Finding and loading Moshi checkpoints: the LM, the Mimi codec and the text tokenizer.

A checkpoint repository (on the Hugging Face Hub or a local folder) holds a `config.json` with the LM keyword
arguments plus a few file-name and usage keys, the LM weights, the Mimi weights and a sentencepiece model.
`CheckpointInfo.from_hf_repo` resolves those files (`from_checkpoint`: a moshi-finetune checkpoint folder;
`from_files`: files without a repository); `get_moshi_lm` / `get_mimi` build the models and load the weights. A
config.json's keys are checked against `LMModel`'s arguments before anything is built (`check_lm_config`), and a file
that cannot be had from the Hub is one `HubDownloadError` naming the repository and the file.

File references accepted everywhere: a local path, `file://<path>`, or `hf://<owner>/<repo>/<path in repo>`.
Weights are read from safetensors files only (no pickle): `.pt` / `.bin` / `.ckpt` files are refused.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
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
from ..modules.ttt import TTTConfig
from .compression import MimiModel
from .lm import LMModel

try:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )
except ImportError:  # huggingface_hub < 0.23
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

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


def require_repository(hf_repo: str | Path) -> None:
    """A repository that looks like a local path must be a folder (it is never a Hub id), so a typo fails at once."""
    if _is_local_folder(hf_repo):
        return
    if Path(hf_repo).exists():
        raise NotADirectoryError(f"{hf_repo} is a file; give the checkpoint folder (holding config.json) or a Hugging "
                                 f"Face repository id such as {DEFAULT_REPO}")
    if isinstance(hf_repo, Path) or looks_like_local_path(hf_repo):
        raise FileNotFoundError(f"{hf_repo}: no such local folder (a Hugging Face repository id looks like "
                                f"{DEFAULT_REPO})")


class HubDownloadError(OSError):
    """A file of a Hugging Face repository that cannot be had; the message names the repository, the file, why, and
    what to do instead (`hub_download_error`)."""


class HubFileNotFoundError(HubDownloadError, EntryNotFoundError):
    """The repository is there but has no such file."""


def hub_download_error(kind: type[HubDownloadError], repo_id: str, filename: str, reason: str) -> HubDownloadError:
    return kind(f"cannot get {filename} of the Hugging Face repository {repo_id}: {reason}. Use local files instead (a "
                "local checkpoint folder as the repository, or the files themselves, e.g. --moshi-weights), or set "
                "HF_HUB_OFFLINE=1 to use the files already in the Hugging Face cache")


HUB_PROBE_TIMEOUT = 5.0
"""Seconds to wait for the Hub's answer before taking it for unreachable."""


@functools.cache
def _hub_unreachable() -> str | None:
    """Why the Hub cannot be reached (None when it answers), asked once per process with one request and no retries:
    `hf_hub_download` retries for about 25 s before it gives up on an unreachable Hub."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT)
    except Exception as error:  # noqa: BLE001 - requests and httpx raise different types; any failure means unreachable
        return f"{constants.ENDPOINT} is unreachable ({' '.join(str(error).split()) or type(error).__name__})"
    return None


def _download(repo_id: str, filename: str, revision: str | None) -> Path:
    """`filename` of the Hub repository `repo_id`, from the cache or downloaded; a HubDownloadError when it cannot be
    had. An unreachable Hub is found out with one request: cached files are then used as they are."""
    from huggingface_hub import constants

    unreachable = None if constants.HF_HUB_OFFLINE else _hub_unreachable()
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=unreachable is not None))
    except LocalEntryNotFoundError as error:
        reason = unreachable or ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else " ".join(str(error).split()))
        raise hub_download_error(HubDownloadError, repo_id, filename, f"not in the local cache and {reason}") from error
    except EntryNotFoundError as error:
        raise hub_download_error(HubFileNotFoundError, repo_id, filename, "the repository has no such file") from error
    except RepositoryNotFoundError as error:
        raise hub_download_error(HubDownloadError, repo_id, filename, "no such repository on the Hub (or it is "
                                 "private or gated: log in with `hf auth login`)") from error
    except HfHubHTTPError as error:
        raise hub_download_error(HubDownloadError, repo_id, filename, " ".join(str(error).split())) from error


def _resolve_config_path(hf_repo: str | Path, revision: str | None) -> Path | None:
    """The repository's config.json, or None for a legacy repository that has none."""
    if _is_local_folder(hf_repo):
        path = Path(hf_repo) / "config.json"
        return path if path.exists() else None
    try:
        return _download(str(hf_repo), "config.json", revision)
    except EntryNotFoundError:
        return None


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _is_safetensors(path: str | Path) -> bool:
    """Whether `path` names a safetensors file by its suffix (upstream's name; training code imports it)."""
    return Path(path).suffix.lower() in SAFETENSORS_SUFFIXES


def require_safetensors_name(path: str | Path, what: str) -> None:
    """A ValueError unless `path` names a safetensors file; pickle-based checkpoints are refused (they can run code)."""
    suffix = Path(path).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"{what} {path} is a pickle-based checkpoint ({suffix}); only safetensors files are loaded. "
            "Convert it once with `safetensors.torch.save_file(state_dict, 'weights.safetensors')` in a trusted "
            "session."
        )
    if not _is_safetensors(path):
        raise ValueError(f"{what} {path} is not a safetensors file (expected one of {', '.join(SAFETENSORS_SUFFIXES)})")


def _require_safetensors(path: str | Path, what: str) -> Path:
    """The path of an existing safetensors file (`require_safetensors_name`)."""
    require_safetensors_name(path, what)
    return _require_file(Path(path), what)


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
        `file://`, `hf://`). A file named by a `*_name` key of config.json is taken from the config's own folder when it
        is there, else from the repository. Without config.json the repository is taken to hold a released 7B Moshi.
        """
        require_repository(hf_repo)
        if config_path is None:
            resolved_config = _resolve_config_path(hf_repo, revision)
        else:
            resolved_config = _require_file(hf_get(config_path, revision=revision), "config file")
        if resolved_config is None:
            warnings.warn(
                f"{hf_repo} has no config.json: assuming the released Moshi 7B configuration and file names",
                stacklevel=2,
            )
        files = CheckpointFiles(moshi_weights, mimi_weights, tokenizer, mimi_config_path, lora_weights, ttt_weights)
        return _checkpoint_info(resolved_config, hf_repo, files, revision)

    @staticmethod
    def from_files(
        moshi_weights: Path | str,
        config_path: Path | str | None = None,
        mimi_weights: Path | str | None = None,
        tokenizer: Path | str | None = None,
        mimi_config_path: Path | str | None = None,
        lora_weights: Path | str | None = None,
        ttt_weights: Path | str | None = None,
    ) -> CheckpointInfo:
        """A checkpoint given as files, without a repository: the LM weights, optionally its config.json (default:
        the 7B configuration; its `*_name` keys are looked up in its folder), and the other files when needed
        (`mimi_weights` and `tokenizer` stay None when neither an argument nor the config's folder gives them)."""
        config = None if config_path is None else _require_file(hf_get(config_path), "config file")
        files = CheckpointFiles(moshi_weights, mimi_weights, tokenizer, mimi_config_path, lora_weights, ttt_weights)
        return _checkpoint_info(config, None, files, None)

    @staticmethod
    def from_checkpoint(
        path: str | Path,
        hf_repo: str | Path | None = None,
        config_path: Path | str | None = None,
        moshi_weights: Path | str | None = None,
        mimi_weights: Path | str | None = None,
        tokenizer: Path | str | None = None,
        mimi_config_path: Path | str | None = None,
        lora_weights: Path | str | None = None,
        ttt_weights: Path | str | None = None,
        revision: str | None = None,
    ) -> CheckpointInfo:
        """A checkpoint folder written by moshi-finetune's `Checkpointer`: `path` is its `consolidated/` folder or the
        `checkpoint_NNNNNN/` folder above it.

        The folder holds `config.json` (the base model's config.json with `lora`, `lora_rank`, `lora_scaling`) and
        either `lora.safetensors` (the trained adapters: LoRA and/or TTT weights, loaded over the base model's weights)
        or `consolidated.safetensors` (every weight, adapters merged). The moshi-finetune TTT fork adds
        `training_config.json`: its `ttt:` section builds the TTT layers (`TTTConfig.from_moshi_finetune`) and its
        `moshi_paths` name the base model (`hf_repo_id`, or `moshi_path` / `mimi_path` / `tokenizer_path`). `hf_repo`
        and the explicit files override what the folder says (`config_path` its config.json); when nothing names the
        base model, the released Moshi is assumed (a warning).
        """
        folder = finetune_checkpoint_folder(path)
        training_file = folder / TRAINING_CONFIG_NAME
        training = _read_json(training_file, "training config") if training_file.is_file() else {}
        base = _BaseModelPaths(_mapping(training.get("moshi_paths") or {}, f"{training_file}: moshi_paths"),
                               training_file)
        config_file = folder / "config.json" if config_path is None else _require_file(hf_get(config_path),
                                                                                       "config file")
        raw_config = read_lm_config(config_file)
        lora = bool(raw_config.get("lora"))
        if (folder / CONSOLIDATED_NAME).is_file():
            moshi_weights = moshi_weights or folder / CONSOLIDATED_NAME
            lora = lora and lora_weights is not None  # the adapters trained are merged into the file
        else:
            moshi_weights = moshi_weights or base.file("moshi_path")
            lora_weights = lora_weights or (folder / ADAPTERS_NAME if lora else None)
            ttt_weights = ttt_weights or (None if lora else folder / ADAPTERS_NAME)
        files = CheckpointFiles(moshi_weights, mimi_weights or base.file("mimi_path"),
                                tokenizer or base.file("tokenizer_path"), mimi_config_path, lora_weights, ttt_weights)
        hf_repo = hf_repo or base.paths.get("hf_repo_id")
        if hf_repo is None and None in (files.moshi_weights, files.mimi_weights, files.tokenizer):
            warnings.warn(f"{folder} does not say which model it was trained from (no training_config.json naming "
                          f"moshi_paths): assuming {DEFAULT_REPO}; name it with --hf-repo", stacklevel=2)
            hf_repo = DEFAULT_REPO
        if hf_repo is not None:
            require_repository(hf_repo)
        info = _checkpoint_info(config_file, hf_repo, files, revision)
        info.lm_config = {key: value for key, value in info.lm_config.items() if lora or key not in _LORA_KEYS}
        ttt = _finetune_ttt_config(training, training_file)
        if ttt is not None:
            info.lm_config["ttt"] = ttt
        return info

    def with_lm_overrides(self, **overrides: Any) -> CheckpointInfo:
        """This checkpoint with `LMModel` keyword arguments replaced (e.g. `ttt=...`, `context=...`)."""
        lm_config = default_lm_config() if self.lm_config is None else dict(self.lm_config)
        return dataclasses.replace(self, lm_config=lm_config | overrides)

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
        if self.mimi_weights is None:
            raise ValueError("no Mimi weights were given (name them, or a repository holding them)")
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
        if self.tokenizer is None:
            raise ValueError("no text tokenizer was given (name it, or a repository holding it)")
        path = _require_file(Path(self.tokenizer), "text tokenizer")
        return sentencepiece.SentencePieceProcessor(model_file=str(path))


def mimi_codebooks(n_q: int, dep_q: int) -> int:
    """Codebooks Mimi must produce for an LM with `n_q` audio streams, `dep_q` of them its own: the wider of the own
    and the user audio."""
    return max(dep_q, n_q - dep_q)


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


@dataclass
class CheckpointFiles:
    """Files given explicitly (file references), each overriding the one config.json names."""

    moshi_weights: Path | str | None = None
    mimi_weights: Path | str | None = None
    tokenizer: Path | str | None = None
    mimi_config: Path | str | None = None
    lora_weights: Path | str | None = None
    ttt_weights: Path | str | None = None


def _checkpoint_info(
    config_file: Path | None, hf_repo: str | Path | None, files: CheckpointFiles, revision: str | None,
) -> CheckpointInfo:
    """The checkpoint described by `config_file` (None: the released 7B), each file taken from `files`, else from
    the config's folder when the file its `*_name` key names is there, else from `hf_repo` (None: not found)."""
    raw_config = None if config_file is None else read_lm_config(config_file)
    lm_config, names, usage = _split_config(raw_config)

    def pick(override: Path | str | None, name: str | None) -> Path | None:
        if override is not None:
            return hf_get(override, revision=revision)
        if name is None:
            return None
        if config_file is not None and (config_file.parent / name).is_file():
            return config_file.parent / name
        return None if hf_repo is None else hf_get(name, hf_repo, revision=revision)

    mimi_config_file = pick(files.mimi_config, names["mimi_config_name"])
    return CheckpointInfo(
        moshi_weights=pick(files.moshi_weights, names["moshi_name"]),
        mimi_weights=pick(files.mimi_weights, names["mimi_name"]),
        tokenizer=pick(files.tokenizer, names["tokenizer_name"]),
        lm_config=lm_config,
        raw_config=raw_config,
        mimi_config=None if mimi_config_file is None else _read_json(mimi_config_file, "Mimi config file"),
        model_type=usage["model_type"],
        lora_weights=pick(files.lora_weights, names["lora_name"]),
        lm_gen_config=usage["lm_gen_config"],
        tts_config=usage["tts_config"],
        stt_config=usage["stt_config"],
        model_id=usage["model_id"],
        ttt_weights=pick(files.ttt_weights, names["ttt_name"]),
    )


# ---------------------------------------------------------------------------------------------------------------------
# config.json: LM arguments checked before anything is built

_LORA_KEYS = ("lora", "lora_rank", "lora_scaling")
_REFUSED_KEYS = ("conditioners", "fuser", "condition_provider", "cross_attention", "quantize",
                 "demux_second_text_stream", "demux_second_stream", "depformer_causal")
"""Keys of upstream's configs that this fork reads only to refuse them (or to drop them, `depformer_causal`)."""
REQUIRED_LM_KEYS = ("dim", "num_heads", "num_layers", "n_q", "dep_q", "card", "delays")
"""Keys every Moshi config.json has: without them `LMModel`'s small defaults would build another architecture."""
_SET_BY_LM = ("self", "d_model", "num_heads", "dim_feedforward", "norm", "causal", "context", "ttt_blocks", "ttt",
              "checkpointing", "rope", "activation", "device", "dtype", "layer_kwargs", "kwargs")


def _parameters(function: Any) -> set[str]:
    return set(inspect.signature(function).parameters)


@functools.cache
def lm_config_keys() -> frozenset[str]:
    """Every key a checkpoint's config.json may hold: `LMModel`'s arguments, those it passes on to its transformers
    (`depformer_<name>` for the depformer's), the file-name, usage and LoRA keys, and the keys refused with a
    message."""
    from ..modules.transformer import StreamingTransformer, StreamingTransformerLayer

    passed_on = (_parameters(StreamingTransformer.__init__) | _parameters(StreamingTransformerLayer.__init__))
    main = passed_on - set(_SET_BY_LM)
    depformer = {f"depformer_{name}" for name in main | {"num_heads", "context"}}
    own = _parameters(LMModel.__init__) - {"self", "device", "dtype", "kwargs"}
    return frozenset(own | main | depformer | {*_CONFIG_FILE_KEYS, *_CONFIG_USAGE_KEYS, *_LORA_KEYS, *_REFUSED_KEYS})


def check_lm_config(raw_config: dict[str, Any], source: str | Path) -> None:
    """A ValueError naming `source`, the unknown keys of `raw_config` (each with the closest known key) and the
    missing required ones, or a NotImplementedError naming the features this fork does not support, before any model
    is built."""
    known = lm_config_keys()
    unknown = sorted(set(raw_config) - known)
    missing = [key for key in REQUIRED_LM_KEYS if key not in raw_config]
    problems = []
    if unknown:
        problems.append("unknown LM argument(s) " + ", ".join(_with_closest(key, known) for key in unknown))
    if missing:
        problems.append("missing LM argument(s) " + ", ".join(repr(key) for key in missing))
    if problems:
        raise ValueError(f"{source}: {'; '.join(problems)}")
    refused = [key for key in _REFUSED_KEYS if raw_config.get(key) and key != "depformer_causal"]
    if refused:
        raise NotImplementedError(f"{source}: {', '.join(refused)}: conditioned Moshi models, cross-attention, "
                                  "quantization and a second text stream are not supported by this fork")


def _with_closest(key: str, known: frozenset[str]) -> str:
    matches = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
    return f"{key!r} (did you mean {matches[0]!r}?)" if matches else repr(key)


def read_lm_config(path: str | Path) -> dict[str, Any]:
    """A checkpoint's config.json, its keys checked (`check_lm_config`)."""
    raw_config = _read_json(Path(path), "config file")
    check_lm_config(raw_config, path)
    return raw_config


# ---------------------------------------------------------------------------------------------------------------------
# moshi-finetune checkpoint folders

TRAINING_CONFIG_NAME = "training_config.json"
ADAPTERS_NAME = "lora.safetensors"
CONSOLIDATED_NAME = "consolidated.safetensors"
_BASE_PATH_KEYS = {"moshi_path": "LM weights", "mimi_path": "Mimi weights", "tokenizer_path": "text tokenizer"}


def finetune_checkpoint_folder(path: str | Path) -> Path:
    """The `consolidated/` folder of a moshi-finetune checkpoint given as itself or as the `checkpoint_NNNNNN/` folder
    above it; a FileNotFoundError saying what such a folder holds otherwise."""
    path = Path(path)
    folder = path / "consolidated" if (path / "consolidated").is_dir() else path
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path}: no such folder")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {path}: no config.json; a moshi-finetune checkpoint is a "
                                "checkpoint_NNNNNN/consolidated/ folder with config.json and lora.safetensors or "
                                "consolidated.safetensors")
    weights = [name for name in (ADAPTERS_NAME, CONSOLIDATED_NAME) if (folder / name).is_file()]
    if len(weights) != 1:
        found = "both" if weights else "neither"
        raise FileNotFoundError(f"checkpoint {folder}: holds {found} of {ADAPTERS_NAME} (adapters) and "
                                f"{CONSOLIDATED_NAME} (every weight); expected exactly one")
    return folder


@dataclass
class _BaseModelPaths:
    """The `moshi_paths` of a training config: the base model's repository (`hf_repo_id`) or files."""

    paths: dict[str, Any]
    training_file: Path

    def file(self, key: str) -> str | None:
        """The file `moshi_paths.<key>` names (None when it names none); a FileNotFoundError naming the key when it is
        not there."""
        value = self.paths.get(key)
        if value is not None and not str(value).startswith("hf://") and not Path(value).is_file():
            raise FileNotFoundError(f"{self.training_file}: moshi_paths.{key} {value}: no such file (the "
                                    f"{_BASE_PATH_KEYS[key]} the training started from; paths are relative to where "
                                    "it ran): give the file explicitly, or the repository it came from")
        return value


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise ValueError(f"{what} must be a mapping, got {type(value).__name__}")


def _finetune_ttt_config(training: dict[str, Any], training_file: Path) -> TTTConfig | None:
    """The TTT layers a training config's `ttt:` section enables (None when it has none or `enable` is false). The
    file lists every key of their `TTTArgs`, so keys that only steer training are not pointed out."""
    section = _mapping(training.get("ttt") or {}, f"{training_file}: ttt")
    if not section.get("enable"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            return TTTConfig.from_moshi_finetune(section)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{training_file}: its ttt section: {error}") from error


def read_ttt_config(path: str | Path) -> TTTConfig:
    """The TTT config of a file: the `ttt:` section of a training YAML or of a `training_config.json`, or a file that
    is such a section; in our format or in moshi-finetune's (`TTTConfig.from_section`). Errors name the file."""
    path = Path(path)
    data = _read_json(path, "TTT config") if path.suffix.lower() == ".json" else _read_yaml(path, "TTT config")
    if "ttt" not in data:
        try:
            return TTTConfig.from_section(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"the TTT config {path} has no `ttt:` section and is not such a section itself "
                             f"({error})") from error
    section = data["ttt"]
    if not isinstance(section, dict) or not section:
        raise ValueError(f"the TTT config {path} has no `ttt:` section (a mapping of TTT settings; its `ttt` is "
                         f"{section!r})")
    try:
        return TTTConfig.from_section(section)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the TTT config {path}: {error}") from error


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    _require_file(path, what)
    try:
        import yaml
    except ImportError as error:
        raise ValueError(f"{what} {path}: reading YAML needs pyyaml (pip install pyyaml), or give a JSON file") \
            from error
    try:
        value = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{what} {path} is not valid YAML: {' '.join(str(error).split())}") from error
    if isinstance(value, dict):
        return value
    raise ValueError(f"{what} {path} must hold a mapping, got {type(value).__name__}")


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

    An adapter file (`lora_weights`, `ttt_weights`; the same file may be both, as moshi-finetune's `lora.safetensors`)
    may hold LoRA adapters (`.lora_A.` / `.lora_B.` keys) and other weights (TTT layers, fine-tuned embeddings): the
    adapters go to the LoRA layers, the other weights over the base weights. LoRA wraps every linear layer except those
    of the TTT layers, which are trained in full. Weights are loaded strictly: missing or unexpected keys raise a
    ValueError listing them. Checkpoints saved by moshi-finetune's TTT integration are renamed to this package's
    layout, with a warning listing unmapped keys.
    """
    kwargs = _prepare_lm_kwargs(lm_kwargs, lm_kwargs_overrides)
    lora = bool(kwargs.pop("lora", False))
    lora_rank = kwargs.pop("lora_rank", _LORA_DEFAULT_RANK)
    lora_scaling = kwargs.pop("lora_scaling", _LORA_DEFAULT_SCALING)
    if lora_weights is not None and not lora:
        raise ValueError(f"LoRA weights {lora_weights} were given but the LM config does not enable `lora`")

    adapter_files = [path for path in dict.fromkeys((ttt_weights, lora_weights)) if path is not None]
    if filename is None:
        if ttt_weights is not None:
            raise ValueError(f"TTT weights {ttt_weights} were given without base LM weights to merge them with")
        model = LMModel(device=device, dtype=dtype, **kwargs)
        adapters = None if lora_weights is None else _load_safetensors(lora_weights, "LoRA weights", device)
    else:
        model = LMModel(device="meta", dtype=dtype, **kwargs)
        state, adapters = _read_lm_state(filename, adapter_files, device)
        _load_strict(model, state, _describe_sources(filename, adapter_files), dtype)
        if adapters and not lora:
            raise ValueError(f"{', '.join(map(str, adapter_files))} hold(s) LoRA adapters but the LM config does not "
                             "enable `lora`")
        if not adapters and lora_weights is None:
            adapters = None

    if lora:
        source = ", ".join(map(str, adapter_files))
        _add_lora(model, lora_rank, lora_scaling, adapters, f"LoRA file {source}", device, dtype, fuse_lora)
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


def _describe_sources(filename: str | Path, adapter_files: Sequence[str | Path]) -> str:
    return " + ".join(map(str, [filename, *adapter_files]))


def _is_lora_key(key: str) -> bool:
    return ".lora_" in key


def _read_lm_state(
    filename: str | Path, adapter_files: Sequence[str | Path], device: torch.device | str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The base weights with the adapter files' other weights merged over them, and the files' LoRA adapters."""
    state = _read_weights(filename, "LM weights", device)
    adapters: dict[str, torch.Tensor] = {}
    for path in adapter_files:
        for key, value in _read_weights(path, "adapter weights", device).items():
            (adapters if _is_lora_key(key) else state)[key] = value
    return state, adapters


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


def _check_shapes(model: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str = "") -> None:
    """WeightsMismatchError listing the tensors of `state` whose shapes differ from the model's (`hint` ends it)."""
    expected = model.state_dict()
    mismatched = [(key, list(value.shape), list(expected[key].shape)) for key, value in state.items()
                  if key in expected and value.shape != expected[key].shape]
    if mismatched:
        raise WeightsMismatchError(source, mismatched=mismatched, hint=hint)


def _add_lora(
    model: LMModel,
    rank: int,
    scaling: float,
    adapters: dict[str, torch.Tensor] | None,
    source: str,
    device: torch.device | str,
    dtype: torch.dtype,
    fuse: bool,
) -> None:
    """Wrap every linear layer outside the TTT layers in a LoRA adapter, load the `adapters` when given (freshly
    initialised adapters otherwise), and fuse on request."""
    from ..modules.ttt import TTTBlock

    if adapters is None:
        replace_all_linear_with_lora(model, rank, scaling, device=device, dtype=dtype, skip=(TTTBlock,))
    else:
        replace_all_linear_with_lora(model, rank, scaling, device="meta", dtype=dtype, skip=(TTTBlock,))
        _check_shapes(model, adapters, source)
        _cast_floats_like(adapters, model, dtype)
        result = model.load_state_dict(adapters, strict=False, assign=True)
        missing_adapters = [key for key in result.missing_keys if _is_lora_key(key)]
        if missing_adapters or result.unexpected_keys:
            raise WeightsMismatchError(source, missing_adapters, result.unexpected_keys)
    if fuse:
        replace_lora_with_linear(model)


def _ensure_materialized(model: nn.Module, filename: str | Path | None) -> None:
    """Every parameter and buffer must hold real data after loading (none left on the meta device)."""
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise RuntimeError(f"after loading {filename}, these tensors have no data (meta device): {', '.join(left)}")


# ---------------------------------------------------------------------------------------------------------------------
# Mimi


_OTHER_MIMI_HINT = ("these are not the released Mimi's weights, and no Mimi config was named: give the codec's config "
                    "(`mimi_config_name` in the repository's config.json, or --mimi-config)")


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
        _check_shapes(model, state, str(filename), hint="" if mimi_config is not None else _OTHER_MIMI_HINT)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise WeightsMismatchError(str(filename), result.missing_keys, result.unexpected_keys)
    model.set_num_codebooks(num_codebooks)
    model.eval()
    return model

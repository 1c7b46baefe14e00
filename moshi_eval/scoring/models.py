"""Loading the LM and Mimi for the command line, and describing a model in the results."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from moshi.models import loaders

from .fingerprint import weights_fingerprint
from .preflight import check_file_reference, check_hf_repo

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class ModelSpec:
    """Where the weights come from: a Hugging Face repo (with optional local overrides) or local files only."""

    hf_repo: str | None = None
    moshi_weights: str | None = None
    lm_config: str | None = None
    mimi_weights: str | None = None
    mimi_config: str | None = None
    tokenizer: str | None = None
    ttt_weights: str | None = None
    lora_weights: str | None = None

    def describe(self) -> dict[str, Any]:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    def check_local_files(self) -> None:
        """Before loading anything: a `--hf-repo` that looks like a path is a folder, every local file exists
        (ConfigError naming the flag)."""
        if self.hf_repo is not None:
            check_hf_repo(self.hf_repo)
        for name, value in dataclasses.asdict(self).items():
            if name != "hf_repo" and value is not None:
                check_file_reference(str(value), f"--{name.replace('_', '-')}")


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def load_lm(spec: ModelSpec, device: str, dtype: torch.dtype) -> tuple[Any, Any | None]:
    """The LM in eval mode, and the `CheckpointInfo` when it came from a Hugging Face repo. An unsupported
    configuration is a NotImplementedError naming where the configuration came from."""
    try:
        return _load_lm(spec, device, dtype)
    except NotImplementedError as error:
        raise NotImplementedError(f"{spec.lm_config or spec.hf_repo or 'the default LM config'}: {error}") from error


def _load_lm(spec: ModelSpec, device: str, dtype: torch.dtype) -> tuple[Any, Any | None]:
    if spec.hf_repo is None and spec.moshi_weights is None:
        raise ValueError("no model given: pass --hf-repo, or --moshi-weights (with --lm-config), or use --demo")
    optional = {"ttt_weights": spec.ttt_weights} if spec.ttt_weights else {}
    if spec.hf_repo is not None:
        info = loaders.CheckpointInfo.from_hf_repo(
            spec.hf_repo, moshi_weights=spec.moshi_weights, mimi_weights=spec.mimi_weights, tokenizer=spec.tokenizer,
            config_path=spec.lm_config, lora_weights=spec.lora_weights, **optional)
        return info.get_moshi(device=device, dtype=dtype).eval(), info
    lm_kwargs = None
    if spec.lm_config is not None:
        lm_kwargs = loaders.lm_kwargs_of(loaders.read_config_file(spec.lm_config, "LM config"))
    lm = loaders.get_moshi_lm(spec.moshi_weights, lm_kwargs=lm_kwargs, device=device, dtype=dtype,
                              lora_weights=spec.lora_weights, **optional)
    return lm.eval(), None


def load_mimi(spec: ModelSpec, lm: Any, device: str, info: Any | None) -> Any:
    """Mimi set to the codebooks the LM needs; ValueError when no Mimi weights are given."""
    if info is not None:
        return info.get_mimi(device=device)
    if spec.mimi_weights is None:
        raise ValueError("audio input and the silence user stream need Mimi: pass --mimi-weights (or --hf-repo), "
                         "or use pre-encoded --codes with --user-stream zero")
    mimi_config = loaders.read_config_file(spec.mimi_config, "Mimi config") if spec.mimi_config else None
    num_codebooks = loaders.mimi_codebooks(int(lm.n_q), int(lm.dep_q))
    return loaders.get_mimi(spec.mimi_weights, mimi_config, device=device, num_codebooks=num_codebooks)


def count_ttt_layers(lm: torch.nn.Module) -> int:
    return sum(1 for module in lm.modules() if hasattr(module, "ttt_layer"))


def model_identity(lm: Any, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the results say about the model: where it came from, its shape and a weights fingerprint."""
    first = next(iter(lm.parameters()))
    return {
        "source": source or {},
        "class": type(lm).__name__,
        "fingerprint": weights_fingerprint(lm),
        "num_parameters": int(sum(p.numel() for p in lm.parameters())),
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": str(first.device),
        "dep_q": int(lm.dep_q),
        "n_q": int(lm.n_q),
        "card": int(lm.card),
        "text_card": int(lm.text_card),
        "delays": [int(d) for d in lm.delays],
        "ttt_layers": count_ttt_layers(lm),
    }

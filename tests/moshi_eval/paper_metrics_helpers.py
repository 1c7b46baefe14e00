"""Helpers shared by the paper-metrics tests: the committed espeak-ng sets, a small LM, and the parallel-forward
reference every score is checked against."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from moshi.models.lm import LMModel
from moshi_eval.librilight.demo import DEMO_LM_CONFIG, build_demo_mimi
from moshi_eval.scoring.data import CodesCache, MimiSequenceEncoder, SequenceSource, read_audio_header
from moshi_eval.scoring.scorer import token_cross_entropy

DATA = Path(__file__).resolve().parent / "data" / "paper_metrics"
FOLDERS = {"swuggy": "lexical/dev", "sblimp": "syntactic/dev", "sstory": "sstory", "tstory": "tstory"}

# The demo LM's streams and card (the demo Mimi's), narrower, with a shorter context and no TTT layers.
SMALL_LM_CONFIG = {key: value for key, value in DEMO_LM_CONFIG.items() if key != "ttt"} | {
    "dim": 32, "text_card": 48, "context": 12, "depformer_dim": 16, "depformer_dim_feedforward": 48}


def small_lm(seed: int = 0) -> LMModel:
    """A Moshi-structured LM with random weights whose card matches the demo Mimi (64); context 12 frames, shorter
    than most utterances."""
    torch.manual_seed(seed)
    return LMModel(**SMALL_LM_CONFIG).eval()


def save_small_checkpoint(folder: Path) -> list[str]:
    """The small LM and the demo Mimi as local weights and configs; the model flags naming them."""
    from safetensors.torch import save_file

    from moshi_eval.librilight.demo import DEMO_MIMI_CONFIG

    folder.mkdir(parents=True, exist_ok=True)
    save_file(small_lm().state_dict(), str(folder / "lm.safetensors"))
    save_file(demo_mimi().state_dict(), str(folder / "mimi.safetensors"))
    (folder / "lm_config.json").write_text(json.dumps(SMALL_LM_CONFIG | {"model_type": "moshi"}))
    (folder / "mimi_config.json").write_text(json.dumps(DEMO_MIMI_CONFIG))
    return ["--moshi-weights", str(folder / "lm.safetensors"), "--lm-config", str(folder / "lm_config.json"),
            "--mimi-weights", str(folder / "mimi.safetensors"), "--mimi-config", str(folder / "mimi_config.json"),
            "--device", "cpu"]


def codes_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh codes cache folder (the tests' `cache_dir` fixture, one per module)."""
    return tmp_path_factory.mktemp("codes_cache")


@functools.cache
def demo_mimi():
    return build_demo_mimi()


def set_dirs(root: Path = DATA) -> dict[str, str]:
    """`<bench>_dir` settings of the four sets under `root`."""
    return {f"{bench}_dir": str(root / folder) for bench, folder in FOLDERS.items()}


def copy_sets(destination: Path) -> Path:
    shutil.copytree(DATA, destination)
    return destination


def encoder_for(mimi, cache_dir: Path | None = None) -> MimiSequenceEncoder:
    """An encoder as the pipeline builds it (8 codebooks), sharing the pipeline's codes cache when given."""
    return MimiSequenceEncoder(mimi, 8, None if cache_dir is None else CodesCache(cache_dir))


def utterance_codes(encoder: MimiSequenceEncoder, path: Path) -> torch.Tensor:
    """The utterance's Mimi codes `[8, T]`, encoded as the pipeline encodes them."""
    return encoder.encode_source(SequenceSource(str(path), chapters=(read_audio_header(path),)), 1 << 30)


def forward_logprobs(lm: LMModel, own: torch.Tensor, user: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Log-probabilities `[T, dep_q]` of `targets` under one parallel `LMModel.forward` over `[text = zero token, own,
    user]`, NaN where a codebook's frame has no prediction (its last `delay` frames)."""
    text = torch.full((1, own.shape[1]), lm.zero_token_id, dtype=torch.long)
    with torch.no_grad():
        out = lm.forward(torch.cat([text, own, user])[None])
    logprobs = -token_cross_entropy(out.logits[0].nan_to_num(), targets).T.double().numpy()
    for k, delay in enumerate(lm.delays[1: 1 + lm.dep_q]):
        if delay:
            logprobs[-delay:, k] = np.nan
    return logprobs


def zeros_like(codes: torch.Tensor, lm: LMModel) -> torch.Tensor:
    return torch.full_like(codes, lm.zero_token_id)

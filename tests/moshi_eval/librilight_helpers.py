"""Helpers shared by the LibriLight evaluation tests: codes files, a small audio tree, fixture models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_codes(folder: Path, name: str, codes: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({"codes": codes.contiguous()}, str(path))
    return path


def random_codes(generator: torch.Generator, codebooks: int, frames: int, card: int) -> torch.Tensor:
    return torch.randint(0, card, (codebooks, frames), generator=generator)


def tone(seconds: float, sample_rate: int, frequency: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * frequency * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_chapter(book: Path, name: str, audio: np.ndarray, sample_rate: int, metadata: dict | None) -> Path:
    import soundfile

    book.mkdir(parents=True, exist_ok=True)
    path = book / f"{name}.flac"
    soundfile.write(str(path), audio, sample_rate)
    if metadata is not None:
        (book / f"{name}.json").write_text(json.dumps(metadata))
    return path


def chapter_metadata(snr: float = 20.0, genres: tuple[str, ...] = ("Fiction",)) -> dict:
    return {"speaker": "1", "book_meta": {"id": "1", "title": "t", "genre": list(genres), "meta_genre": "Literature"},
            "snr": snr, "voice_activity": [[0.0, 1.0]]}


def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes: this checkout importable, one thread each."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def comparable(data: dict) -> dict:
    """A results dict without the fields that legitimately differ between equivalent runs."""
    data = dict(data)
    data.pop("timing", None)
    data["config"] = {k: v for k, v in data["config"].items() if k not in ("output", "plot", "batch_size")}
    return data


def write_tree_for_cli(root: Path) -> Path:
    """Two books of three 16 kHz chapters each (about 2.2 s per chapter) with LibriLight metadata."""
    for speaker, book in (("7", "first"), ("8", "second")):
        for chapter in range(3):
            audio = tone(2.2, 16000, 110.0 + 35 * chapter + 20 * int(speaker), chapter)
            write_chapter(root / speaker / book, f"{chapter:02d}", audio, 16000, chapter_metadata())
    return root


def assert_results_close(got, expected, tolerance: float = 1e-6, where: str = "result") -> None:
    """Equal structure and values, floats within `tolerance` (batch layouts may change the last bits)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            assert_results_close(got[key], expected[key], tolerance, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_results_close(a, b, tolerance, f"{where}[{index}]")
    elif isinstance(expected, float) and not isinstance(got, bool):
        assert isinstance(got, float | int) and abs(got - expected) <= tolerance, f"{where}: {got} != {expected}"
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def save_demo_checkpoint(folder: Path, lm_seed: int = 1, mimi_seed: int = 2) -> tuple:
    """The demo-sized LM (with TTT) and Mimi saved as local weights and configs, as a user would have them; returns
    the two models and the command-line flags that load them."""
    from safetensors.torch import save_file

    from moshi_eval.librilight.demo import DEMO_LM_CONFIG, DEMO_MIMI_CONFIG, build_demo_lm, build_demo_mimi

    folder.mkdir(parents=True, exist_ok=True)
    lm, mimi = build_demo_lm(seed=lm_seed), build_demo_mimi(seed=mimi_seed)
    save_file(lm.state_dict(), str(folder / "lm.safetensors"))
    save_file(mimi.state_dict(), str(folder / "mimi.safetensors"))
    (folder / "lm_config.json").write_text(json.dumps(DEMO_LM_CONFIG | {"model_type": "moshi"}))
    (folder / "mimi_config.json").write_text(json.dumps(DEMO_MIMI_CONFIG))
    flags = ["--moshi-weights", str(folder / "lm.safetensors"), "--lm-config", str(folder / "lm_config.json"),
             "--mimi-weights", str(folder / "mimi.safetensors"), "--mimi-config", str(folder / "mimi_config.json"),
             "--device", "cpu"]
    return lm, mimi, flags

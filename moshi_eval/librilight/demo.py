"""`python -m moshi_eval.librilight --demo`: the whole pipeline on a small random-weight model, in a minute on CPU.

It builds a small Moshi-structured LM with TTT layers in every main-transformer layer and a small Mimi, both with RANDOM
weights, writes a synthetic LibriLight-style tree (speakers, books, chapters of generated voice-like audio at 16 kHz
with JSON metadata) to a temporary folder, and runs the real evaluation on it: discovery, resampling, streaming Mimi
encoding with the codes cache, one-pass teacher-forced scoring, JSON and PNG. The numbers say nothing about any real
model.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from moshi.models import demo_configs
from moshi.models.demo_codebooks import sample_codebooks_from_latent

from .config import LibriLightConfig

if TYPE_CHECKING:
    from moshi.models.compression import MimiModel
    from moshi.models.lm import LMModel

DEMO_SAMPLE_RATE = 16000
DEMO_SPEAKERS = 2
DEMO_BOOKS_PER_SPEAKER = 2
DEMO_CHAPTERS_PER_BOOK = 3
DEMO_CHAPTER_SECONDS = 12.0
DEMO_SETTINGS = {"positions": [200, 300, 400], "window": 100, "bin_size": 25, "batch_size": 4, "resume": False}

DEMO_MIMI_CONFIG = demo_configs.DEMO_MIMI_CONFIG
DEMO_LM_CONFIG = demo_configs.DEMO_LM_CONFIG | {"text_card": 64, "context": 128}

RANDOM_WEIGHTS_NOTICE = ("DEMO: the LM and Mimi have RANDOM weights and the audio is synthetic; the numbers only show "
                         "that the pipeline runs end to end, they say nothing about any real model.")


def build_demo_mimi(seed: int = 0) -> MimiModel:
    """The small Mimi with random weights; its codebooks are drawn from its own latents of generated voice-like audio
    (random centroids would all sit far from the latents and every frame would get the same code)."""
    from moshi.models.compression import MimiModel

    torch.manual_seed(seed)
    mimi = MimiModel.from_config(DEMO_MIMI_CONFIG)
    rng = np.random.default_rng(seed + 1)
    calibration = np.concatenate([voice_like(8.0, pitch, rng) for pitch in (110.0, 140.0, 170.0)])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latent = mimi.encode_to_latent(torch.from_numpy(calibration)[None, None], quantize=False)
        for quantizer in (mimi.quantizer.rvq_first, mimi.quantizer.rvq_rest):
            sample_codebooks_from_latent(quantizer, latent, generator)
    return mimi.eval()


def build_demo_lm(seed: int = 0) -> LMModel:
    """The small Moshi-structured LM with TTT layers, random weights."""
    from moshi.models.lm import LMModel

    torch.manual_seed(seed)
    return LMModel(**DEMO_LM_CONFIG).eval()


def voice_like(seconds: float, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """Syllable-like bursts of a harmonic tone with a moving pitch and pauses, plus a little noise."""
    total = int(seconds * DEMO_SAMPLE_RATE)
    audio = np.zeros(total, dtype=np.float64)
    position = 0
    while position < total:
        length = int(rng.uniform(0.08, 0.3) * DEMO_SAMPLE_RATE)
        t = np.arange(min(length, total - position)) / DEMO_SAMPLE_RATE
        contour = pitch * (1 + 0.15 * np.sin(2 * math.pi * rng.uniform(1, 4) * t + rng.uniform(0, 2 * math.pi)))
        phase = 2 * math.pi * np.cumsum(contour) / DEMO_SAMPLE_RATE
        tone = sum(np.sin(h * phase) / h for h in range(1, 6))
        envelope = np.sin(math.pi * np.linspace(0, 1, t.size)) ** 2
        audio[position: position + t.size] = 0.2 * tone * envelope
        position += t.size + int(rng.uniform(0.02, 0.25) * DEMO_SAMPLE_RATE)
    audio += 0.003 * rng.standard_normal(total)
    return audio.astype(np.float32)


def write_demo_tree(root: Path, seed: int = 0) -> Path:
    """A LibriLight-style tree `<speaker>/<book>/<chapter>.flac` + `.json` of generated audio under `root`."""
    import soundfile

    rng = np.random.default_rng(seed)
    genres = [["Fiction"], ["*Non-fiction", "History"]]
    for speaker_index in range(DEMO_SPEAKERS):
        speaker = f"{100 + speaker_index}"
        pitch = 110.0 + 60.0 * speaker_index
        for book_index in range(DEMO_BOOKS_PER_SPEAKER):
            book = root / speaker / f"book_{book_index}"
            book.mkdir(parents=True, exist_ok=True)
            for chapter_index in range(DEMO_CHAPTERS_PER_BOOK):
                name = f"chapter_{chapter_index:02d}"
                soundfile.write(str(book / f"{name}.flac"), voice_like(DEMO_CHAPTER_SECONDS, pitch, rng),
                                DEMO_SAMPLE_RATE)
                metadata = {
                    "speaker": speaker,
                    "book_meta": {"id": f"{speaker}{book_index}", "title": f"Synthetic book {book_index}",
                                  "genre": genres[book_index % len(genres)], "meta_genre": "Literature"},
                    "snr": float(rng.uniform(10, 30)),
                    "voice_activity": [[0.0, DEMO_CHAPTER_SECONDS]],
                }
                (book / f"{name}.json").write_text(json.dumps(metadata, indent=1))
    return root


def demo_settings(given: dict[str, Any]) -> dict[str, Any]:
    """The demo's settings with the `given` ones over them; results and plot next to each other by default."""
    settings = DEMO_SETTINGS | given
    settings.setdefault("output", "librilight_demo.json")
    settings.setdefault("plot", str(Path(settings["output"]).with_suffix(".png")))
    return settings


def run_demo(config: LibriLightConfig, device: str = "cpu", quiet: bool = False) -> dict[str, Any]:
    """Build the demo models and data, evaluate with `config` (its data replaced by the demo's), write JSON and PNG;
    returns the results dict."""
    print(RANDOM_WEIGHTS_NOTICE, file=sys.stderr, flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo model is tiny: intra-op threads only add synchronisation overhead
    try:
        return evaluate_demo(config, device, quiet=quiet)
    finally:
        torch.set_num_threads(threads)


def evaluate_demo(config: LibriLightConfig, device: str, quiet: bool) -> dict[str, Any]:
    from .evaluate import evaluate_librilight

    with tempfile.TemporaryDirectory(prefix="librilight_demo_") as folder:
        root = write_demo_tree(Path(folder) / "librilight")
        config = config.replace(audio_dir=str(root), audio_files=None, codes=None,
                                cache_dir=config.cache_dir or str(Path(folder) / "codes_cache"))
        lm = build_demo_lm().to(device)
        mimi = build_demo_mimi().to(device)
        result = evaluate_librilight(
            lm, mimi, config, progress=not quiet,
            model_source={"demo": True, "random_weights": True, "note": RANDOM_WEIGHTS_NOTICE})
    data = result.to_dict()
    print(RANDOM_WEIGHTS_NOTICE, file=sys.stderr, flush=True)
    return data

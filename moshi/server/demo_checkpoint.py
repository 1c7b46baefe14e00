"""A small checkpoint folder with RANDOM weights, laid out like a released one, to try the server without downloads.

`write_demo_checkpoint(folder)` writes `config.json` (LM arguments with a TTT layer in every main-transformer layer,
`text_card` set to the size of the trained tokenizer, plus file names), `model.safetensors`, `mimi.safetensors`,
`mimi_config.json` (a narrow Mimi) and `tokenizer.model` (a sentencepiece model trained on a few sentences); the two
configurations are those of `moshi.models.demo_configs`. The model speaks noise and random words; it exists so that the
server, its tests and its benchmark run on a CPU in seconds.

    python -m moshi.server.demo_checkpoint /tmp/moshi_demo
    python -m moshi.server --hf-repo /tmp/moshi_demo --device cpu
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import sentencepiece
import torch
from safetensors.torch import save_file

from ..models.compression import MimiModel
from ..models.demo_codebooks import sample_codebooks_from_latent
from ..models.demo_configs import DEMO_LM_CONFIG, DEMO_MIMI_CONFIG
from ..models.lm import LMModel

DEMO_FILE_NAMES = {
    "moshi_name": "model.safetensors",
    "mimi_name": "mimi.safetensors",
    "mimi_config_name": "mimi_config.json",
    "tokenizer_name": "tokenizer.model",
}

_CORPUS = [
    "hello there how are you doing today",
    "i am a small model with random weights",
    "moshi listens and speaks at the same time",
    "the quick brown fox jumps over the lazy dog",
    "test time training keeps a fast memory of the conversation",
    "what would you like to talk about",
]


def train_demo_tokenizer(path: Path, vocab_size: int = 64) -> sentencepiece.SentencePieceProcessor:
    """A sentencepiece model at `path` (about `vocab_size` pieces) trained on a few English sentences."""
    corpus = path.with_suffix(".corpus.txt")
    corpus.write_text("\n".join(_CORPUS * 10))
    try:
        sentencepiece.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(path.with_suffix("")), vocab_size=vocab_size, hard_vocab_limit=False,
            minloglevel=2,
        )
    finally:
        corpus.unlink()
    path.with_suffix(".vocab").unlink(missing_ok=True)
    return sentencepiece.SentencePieceProcessor(model_file=str(path))


def calibration_audio(seconds: float = 12.0, sample_rate: int = 24000, seed: int = 0) -> np.ndarray:
    """Syllable-like bursts of harmonic tones with gliding pitch, pauses and a little noise `[N]`, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    audio = 0.003 * rng.standard_normal(int(seconds * sample_rate))
    position = 0
    while position < audio.size:
        length = min(int(rng.uniform(0.1, 0.3) * sample_rate), audio.size - position)
        t = np.arange(length) / sample_rate
        pitch = rng.uniform(90.0, 260.0) * (1.0 + 0.2 * t / max(t[-1], 1e-3) * rng.choice([-1.0, 1.0]))
        phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
        envelope = np.sin(np.pi * np.linspace(0.0, 1.0, length)) ** 2
        audio[position: position + length] += 0.25 * envelope * sum(np.sin(h * phase) / h for h in range(1, 5))
        position += length + int(rng.uniform(0.05, 0.3) * sample_rate)
    return audio.astype(np.float32)


@torch.no_grad()
def calibrate_codebooks(mimi: MimiModel, seed: int = 0) -> None:
    """Give every codebook of a random-weight Mimi centroids taken from its own latents of `calibration_audio`, level
    by level on the residuals, so that different sounds get different codes (fresh codebooks map all to code 0)."""
    audio = torch.from_numpy(calibration_audio(seed=seed))[None, None]
    latent = mimi.encode_to_latent(audio, quantize=False)
    generator = torch.Generator().manual_seed(seed)
    for quantizer in (mimi.quantizer.rvq_first, mimi.quantizer.rvq_rest):
        sample_codebooks_from_latent(quantizer, latent, generator)


@torch.no_grad()
def redraw_decoder_weights(mimi: MimiModel, gain: float = 1.5) -> None:
    """Draw the SEANet decoder's convolution weights with a variance that keeps the signal's scale from layer to layer
    and zero its biases: with the default initialisation the decoded audio is a constant that ignores the codes."""
    for name, parameter in mimi.decoder.named_parameters():
        if name.endswith("bias"):
            parameter.zero_()
        elif parameter.dim() == 3:
            transposed = "convtr" in name  # ConvTranspose1d weights are [C_in, C_out, K]
            fan_in = (parameter.shape[0] if transposed else parameter.shape[1]) * parameter.shape[2]
            parameter.normal_(0.0, gain / math.sqrt(fan_in))


def write_demo_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """Write the demo checkpoint into `folder` (created if needed); returns its `config.json`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_demo_tokenizer(folder / DEMO_FILE_NAMES["tokenizer_name"])
    lm_config = DEMO_LM_CONFIG | {"text_card": tokenizer.vocab_size()}
    torch.manual_seed(seed)
    save_file(LMModel(**lm_config).state_dict(), folder / DEMO_FILE_NAMES["moshi_name"])
    mimi = MimiModel.from_config(DEMO_MIMI_CONFIG)
    calibrate_codebooks(mimi, seed)
    redraw_decoder_weights(mimi)
    save_file(mimi.state_dict(), folder / DEMO_FILE_NAMES["mimi_name"])
    (folder / DEMO_FILE_NAMES["mimi_config_name"]).write_text(json.dumps(DEMO_MIMI_CONFIG, indent=1))
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(lm_config | DEMO_FILE_NAMES, indent=1))
    return config_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moshi.server.demo_checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the checkpoint files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    args = parser.parse_args(argv)
    config_path = write_demo_checkpoint(args.folder, args.seed)
    print(f"wrote a demo checkpoint with RANDOM weights: {config_path}")
    print(f"serve it with: python -m moshi.server --hf-repo {args.folder} --device cpu")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

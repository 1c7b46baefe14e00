"""Mimi encoding speed: real-time factor of batch and streaming encoding, side by side (CPU, or `--device cuda`).

Builds the full-size Mimi (the released config) with random weights and encodes the same random audio (default 10 s)
in one call and in 1920-sample frames (or `--frames-per-call` frames) inside `streaming(1)`.
RTF = compute time / audio duration (below 1 is faster than real time).

    python -m bench.mimi [--seconds 10] [--config mimi_config.json] [--threads N] [--frames-per-call 1] [--device cuda]

(from the repository root; `python bench/mimi.py` works once the package is installed).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from moshi.models.compression import MimiModel
from moshi.models.loaders import default_mimi_config
from moshi.quantization.codebook import EuclideanCodebook


def load_config(path: Path | None) -> dict:
    """The released Mimi config, or the JSON file at `path`."""
    if path is None:
        return default_mimi_config()
    if not path.is_file():
        raise FileNotFoundError(f"Mimi config not found at {path}")
    return json.loads(path.read_text())


def randomize_codebooks(model: MimiModel, seed: int) -> None:
    """Random centroids, so that the nearest-centroid searches are not degenerate."""
    generator = torch.Generator().manual_seed(seed)
    codebooks = [module for module in model.modules() if isinstance(module, EuclideanCodebook)]
    with torch.no_grad():
        for codebook in codebooks:
            codebook.embedding_sum.normal_(generator=generator)
            codebook.cluster_usage.uniform_(1.0, 2.0, generator=generator)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    result = fn()
    if result.is_cuda:
        torch.cuda.synchronize(result.device)
    return time.perf_counter() - start, result


def encode_batch(model: MimiModel, wav: torch.Tensor) -> torch.Tensor:
    return model.encode(wav)


def encode_streaming(model: MimiModel, wav: torch.Tensor, frames_per_call: int) -> torch.Tensor:
    with model.streaming(wav.shape[0]):
        chunks = wav.split(frames_per_call * model.frame_size, dim=-1)
        return torch.cat([model.encode(chunk) for chunk in chunks], dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio duration to encode")
    parser.add_argument("--config", type=Path, default=None, help="Mimi config JSON (default: the released config)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--codebooks", type=int, default=8, help="number of codebooks to encode")
    parser.add_argument("--frames-per-call", type=int, default=1, help="frames per streaming call (1 = 1920 samples)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = MimiModel.from_config(load_config(args.config))
    randomize_codebooks(model, seed=0)
    model.set_num_codebooks(args.codebooks)
    model.to(args.device)
    per_call = args.frames_per_call
    frames = per_call * max(1, round(args.seconds * model.frame_rate / per_call))
    wav = (0.1 * torch.randn(1, model.channels, frames * model.frame_size)).to(args.device)
    duration = wav.shape[-1] / model.sample_rate

    with torch.inference_mode():
        encode_streaming(model, wav[..., : 2 * per_call * model.frame_size], per_call)
        batch_s, batch_codes = timed(lambda: encode_batch(model, wav))
        streaming_s, streaming_codes = timed(lambda: encode_streaming(model, wav, per_call))
    same = torch.equal(batch_codes, streaming_codes)

    device = torch.cuda.get_device_name(args.device) if wav.is_cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"Mimi encode, full config, random weights, {device}, "
          f"{duration:.1f} s of audio, {args.codebooks} codebooks")
    for label, seconds in (("batch    ", batch_s), ("streaming", streaming_s)):
        print(f"  {label} : {seconds:7.2f} s   RTF {seconds / duration:.3f}   ({duration / seconds:6.1f}x real time)")
    print(f"  streaming ran {frames // per_call} calls of {per_call * model.frame_size} samples")
    print(f"  streaming / batch time ratio: {streaming_s / batch_s:.2f}; identical codes: {same}")


if __name__ == "__main__":
    main()

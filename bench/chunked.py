"""Throughput of chunked teacher-forced scoring against per-step scoring and a plain parallel forward.

    python bench/chunked.py                 # CPU, moshiko-structured model (dim 512, 8 layers, depformer 256)
    python bench/chunked.py --7b --frames 24000 --chunk 256    # on a GPU: 7B config, random bf16 weights

All three score the same teacher-forced frames. The parallel `LMModel.forward` over the whole sequence is the compute
bound; the goal for chunked scoring is >= 0.8x its throughput.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from moshi.models.lm import LMGen, LMModel

SMALL_CONFIG = {
    "dim": 512, "text_card": 32000, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8, "card": 2048,
    "num_heads": 8, "num_layers": 8, "hidden_scale": 4.125, "causal": True, "context": 3000, "max_period": 10000,
    "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 256,
    "depformer_dim_feedforward": 1056, "depformer_num_heads": 8, "depformer_num_layers": 4,
    "depformer_multi_linear": True, "depformer_context": 8, "depformer_gating": "silu", "depformer_pos_emb": "none",
    "depformer_weights_per_step": True, "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}
SEVEN_B_CONFIG = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "moshiko_7b_config.json"


def step_inputs(lm: LMModel, own: torch.Tensor, max_delay: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step user tokens (no input) `[B, n_user, S]` and teacher-forced own tokens `[B, dep_q, S]`, S = T + max_delay."""
    B, K, T = own.shape
    steps = T + max_delay
    users = torch.full((B, lm.n_q - lm.dep_q, steps), lm.zero_token_id, dtype=torch.long, device=own.device)
    owns = torch.zeros(B, K, steps, dtype=torch.long, device=own.device)
    for k in range(K):
        delay = lm.delays[1 + k]
        owns[:, k, delay: delay + T] = own[:, k]
    return users, owns


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(lm: LMModel, frames: int, chunk: int, per_step_frames: int) -> dict[str, float]:
    """Frames per second of each method (per-step measured on a prefix of `per_step_frames` frames)."""
    device = lm.device
    own = torch.randint(0, lm.card, (1, lm.dep_q, frames), device=device)
    lm_gen = LMGen(lm, use_sampling=False)
    users, owns = step_inputs(lm, own, lm_gen.max_delay)
    pad = torch.full((1, users.shape[2]), lm.text_padding_token_id, dtype=torch.long, device=device)
    codes = torch.cat([pad[:, None, :frames], own, torch.full_like(own, lm.zero_token_id)], dim=1)
    results: dict[str, float] = {}
    main_steps: list[int] = []

    def parallel() -> None:
        lm(codes)

    def chunked(text: torch.Tensor | None) -> Callable[[], None]:
        def run() -> None:
            main_steps.clear()
            with lm_gen.streaming(1):
                for s in range(0, users.shape[2], chunk):
                    part = slice(s, s + chunk)
                    forced = None if text is None else text[:, part]
                    out = lm_gen.step_chunk_with_logits(users[:, :, part], owns[:, :, part], text_replace_tokens=forced)
                    main_steps.append(out.main_steps)
        return run

    def per_step() -> None:
        with lm_gen.streaming(1):
            for s in range(per_step_frames + lm_gen.max_delay):
                lm_gen.step_with_logits(users[:, :, s: s + 1], owns[:, :, s: s + 1], text_replace_tokens=pad[:, s])

    with torch.no_grad():
        results["parallel forward"] = frames / timed(parallel, device)
        results["chunked, pad text"] = frames / timed(chunked(pad), device)
        results["chunked, greedy text"] = frames / timed(chunked(None), device)
        results["greedy speculation acceptance"] = users.shape[2] / sum(main_steps)
        results["per-step step_with_logits"] = per_step_frames / timed(per_step, device)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--7b", dest="seven_b", action="store_true", help="7B config, random bf16 weights (GPU)")
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--per-step-frames", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.seven_b:
        config, device, dtype = json.loads(SEVEN_B_CONFIG.read_text()), "cuda", torch.bfloat16
    else:
        config, device, dtype = SMALL_CONFIG, "cpu", torch.float32
    lm = LMModel(**config, device=device, dtype=dtype).eval()
    results = measure(lm, args.frames, args.chunk, args.per_step_frames)
    print(f"{args.frames} frames, chunk {args.chunk}, device {device}")
    for name, value in results.items():
        unit = "" if "acceptance" in name else " frames/s"
        print(f"{name:>30}: {value:10.2f}{unit}")
    bound = results["parallel forward"]
    print(f"chunked (pad) / parallel forward: {results['chunked, pad text'] / bound:.2f} (goal >= 0.8)")
    print(f"chunked (greedy) / parallel forward: {results['chunked, greedy text'] / bound:.2f}")
    print(f"chunked (pad) / per-step: {results['chunked, pad text'] / results['per-step step_with_logits']:.1f}x")


if __name__ == "__main__":
    main()

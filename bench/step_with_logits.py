"""Cost of `LMGen.step_with_logits` relative to `LMGen.step` (both greedy, no replacement), measured side by side.

    python bench/step_with_logits.py            # CPU, moshiko-structured model (dim 512, 8 layers, depformer 256)
    python bench/step_with_logits.py --7b       # on a GPU: the 7B config with random bf16 weights (CUDA graphs on)

Prints the time per step of each and the ratio (goal: <= 1.10).
"""

from __future__ import annotations

import argparse
import json
import time
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
SEVEN_B_CONFIG = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "released" / "moshiko_7b_config.json"


def time_calls(call, user: torch.Tensor, steps: int) -> float:
    """Seconds per call of `call(user)` over `steps` calls."""
    synchronize(user.device)
    start = time.perf_counter()
    for _ in range(steps):
        call(user)
    synchronize(user.device)
    return (time.perf_counter() - start) / steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_methods(lm_gen: LMGen, batch_size: int, warmup: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of `step` and `step_with_logits`, in alternating rounds on one stream.

    Both methods advance the same streaming state (same caches, CUDA graphs captured once during the warm-up), and the
    order flips every round (ABBA) so that neither always runs on the fuller KV cache.
    """
    lm = lm_gen.lm_model
    user = torch.zeros(batch_size, lm.n_q - lm.dep_q, 1, dtype=torch.long, device=lm.device)
    times: dict[str, list[float]] = {"step": [], "step_with_logits": []}
    with lm_gen.streaming(batch_size):
        for method in times:
            time_calls(getattr(lm_gen, method), user, warmup)
        for index in range(rounds):
            order = list(times) if index % 2 == 0 else list(reversed(times))
            for method in order:
                times[method].append(time_calls(getattr(lm_gen, method), user, steps))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--7b", dest="seven_b", action="store_true", help="7B config, random bf16 weights (GPU)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4, help="alternating measurement rounds")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.seven_b:
        config, device, dtype = json.loads(SEVEN_B_CONFIG.read_text()), "cuda", torch.bfloat16
    else:
        config, device, dtype = SMALL_CONFIG, "cpu", torch.float32
    with torch.no_grad():
        lm = LMModel(**config, device=device, dtype=dtype).eval()
        lm_gen = LMGen(lm, use_sampling=False)
        times = time_methods(lm_gen, args.batch_size, warmup=5, steps=args.steps, rounds=args.rounds)
    best = {method: min(values) for method, values in times.items()}
    label = "7B bf16 " + torch.cuda.get_device_name() if args.seven_b else "CPU dim 512 x 8 layers, depformer 256"
    print(f"model: {label}, batch {args.batch_size}")
    for method, seconds in best.items():
        print(f"{method:>17}: {seconds * 1e3:8.2f} ms/step")
    print(f"ratio step_with_logits / step: {best['step_with_logits'] / best['step']:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()

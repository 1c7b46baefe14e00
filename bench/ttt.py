"""Streaming cost of a TTT layer relative to a streaming attention layer of the same width, measured side by side.

Both modules stream the same input after a prefill of `--context` tokens; per-step (T=1) and per-chunk (T=--chunk)
times are medians over `--repeats` rounds, the modules taking turns inside each round so that load changes hit all.

    python bench/ttt.py [--dim 1024] [--heads 16] [--context 3000] [--batch 1] [--chunk 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from moshi.modules.rope import RotaryEmbedding
from moshi.modules.transformer import StreamingMultiheadAttention
from moshi.modules.ttt import TTTConfig, TTTLayer

Step = Callable[[torch.Tensor], torch.Tensor]


def attention_step(attention: StreamingMultiheadAttention, batch: int, device: torch.device) -> Step:
    """A call that feeds the attention its absolute positions, as the parent transformer does."""
    offsets = torch.zeros(batch, dtype=torch.long, device=device)

    def step(x: torch.Tensor) -> torch.Tensor:
        out = attention(x, offsets)
        offsets.add_(x.shape[1])
        return out

    return step


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, tuple[nn.Module, Step]]:
    factory = {"device": device, "dtype": dtype}
    attention = StreamingMultiheadAttention(
        args.dim, args.heads, causal=True, context=args.context, rope=RotaryEmbedding(), **factory
    )
    modules: dict[str, tuple[nn.Module, Step]] = {
        "attention": (attention, attention_step(attention, args.batch, device))
    }
    for variant in ("linear", "mlp"):
        config = TTTConfig(variant=variant, mini_batch_size=args.mini_batch_size)
        layer = TTTLayer(args.dim, args.heads, config, **factory)
        modules[f"ttt-{variant}"] = (layer, layer)
    return modules


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(step: Step, inputs: list[torch.Tensor], device: torch.device) -> float:
    """Seconds per call of `step` over `inputs`."""
    synchronize(device)
    begin = time.perf_counter()
    for x in inputs:
        step(x)
    synchronize(device)
    return (time.perf_counter() - begin) / len(inputs)


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    modules = build(args, device, dtype)

    def inputs(length: int) -> torch.Tensor:
        return torch.randn(args.batch, length, args.dim, device=device, dtype=dtype)

    prefill = inputs(args.context)
    steps = [inputs(1) for _ in range(args.steps)]
    chunks = [inputs(args.chunk) for _ in range(args.chunks)]
    samples: dict[str, dict[str, list[float]]] = {name: {"step": [], "chunk": []} for name in modules}
    for module, _ in modules.values():
        module.streaming_forever(args.batch)
    for _, step in modules.values():
        step(prefill)
        time_calls(step, steps[:3], device)
    for _ in range(args.repeats):
        for name, (_, step) in modules.items():
            samples[name]["step"].append(time_calls(step, steps, device))
            samples[name]["chunk"].append(time_calls(step, chunks, device))
    return {name: {kind: statistics.median(times) for kind, times in kinds.items()} for name, kinds in samples.items()}


def report(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> None:
    print(
        f"device {args.device}, {args.dtype}, threads {torch.get_num_threads()}, dim {args.dim}, heads {args.heads}, "
        f"batch {args.batch}, attention context {args.context}, TTT mini-batch {args.mini_batch_size}"
    )
    base = results["attention"]
    for kind, label in (("step", "per step (T=1)"), ("chunk", f"per chunk (T={args.chunk})")):
        cells = [f"attention {1e3 * base[kind]:.3f} ms"]
        for name in ("ttt-linear", "ttt-mlp"):
            cost = results[name][kind]
            cells.append(f"{name} {1e3 * cost:.3f} ms ({cost / base[kind]:.2f}x attention)")
        print(f"{label:>22}: " + " | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--context", type=int, default=3000, help="attention context; also the prefill length")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--mini-batch-size", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--steps", type=int, default=32, help="T=1 calls per round")
    parser.add_argument("--chunks", type=int, default=8, help="chunk calls per round")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        report(args, measure(args))


if __name__ == "__main__":
    main()

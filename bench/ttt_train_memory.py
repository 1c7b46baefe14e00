"""Peak memory of one training step with TTT layers, with and without the checkpointed mini-batch scan.

Without `scan_checkpoint_group_size`, backward keeps the fast weights of every mini-batch (a 3000-frame sequence has
188 mini-batches of 16); with groups of G mini-batches it keeps them at group boundaries only and recomputes a group
during backward. Two scopes: `lm`, a whole LM training step (forward, cross-entropy on text and audio, backward) whose
main-transformer layers all have TTT, and `layer`, one `TTTLayer` alone (forward, squared-output loss, backward). Each
setting runs in its own process on random weights; the peak is measured from just before the step:
`torch.cuda.max_memory_allocated` on a GPU, the process's peak resident set (`ru_maxrss`) on a CPU. Printed side by
side, with the ratios.

    python bench/ttt_train_memory.py [--scope both] [--frames 3000] [--dim 1024] [--heads 16] [--num-layers 2]
                                     [--group 16] [--variant mlp] [--device cpu] [--threads N]
                                     [--gradient-checkpointing]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from moshi.models.lm import LMModel
from moshi.modules.ttt import TTTConfig, TTTLayer


def lm_config(args: argparse.Namespace, group: int) -> dict:
    """A moshiko-structured LM scaled down around a realistic TTT width, every main layer with TTT."""
    return {
        "dim": args.dim, "num_heads": args.heads, "num_layers": args.num_layers, "hidden_scale": 4.125,
        "n_q": 16, "dep_q": 8, "card": 2048, "text_card": 4000, "context": args.context, "causal": True,
        "norm": "rms_norm_f32", "gating": "silu", "positional_embedding": "rope",
        "delays": [0, 0] + [1] * 7 + [0] + [1] * 7,
        "depformer_dim": 256, "depformer_num_heads": 8, "depformer_num_layers": 2, "depformer_dim_feedforward": 1024,
        "depformer_multi_linear": True, "depformer_weights_per_step": True, "depformer_pos_emb": "none",
        "depformer_gating": "silu", "depformer_context": 8,
        "ttt": {"layers": "all", "variant": args.variant, "mini_batch_size": args.mini_batch_size,
                "scan_checkpoint_group_size": group},
        "gradient_checkpointing": args.gradient_checkpointing,
    }


def resident_mb() -> float:
    """Current resident set of this process, in MB (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_resident_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_step(lm: LMModel, codes: torch.Tensor) -> None:
    output = lm(codes)
    text = F.cross_entropy(output.text_logits[output.text_mask].float(), codes[:, :1][output.text_mask])
    audio = F.cross_entropy(output.logits[output.mask].float(), codes[:, 1: 1 + lm.dep_q][output.mask])
    (text + audio).backward()


def lm_step(args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """The LM training step of this setting, ready to run."""
    lm = LMModel(**lm_config(args, args.child_group), device=device, dtype=torch.float32).train()
    generator = torch.Generator().manual_seed(1)
    codes = torch.cat([torch.randint(0, lm.text_card, (args.batch, 1, args.frames), generator=generator),
                       torch.randint(0, lm.card, (args.batch, lm.n_q, args.frames), generator=generator)], dim=1)
    codes = codes.to(device)
    return lambda: training_step(lm, codes)


def layer_step(args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """One TTT layer's training step of this setting, ready to run."""
    config = TTTConfig(variant=args.variant, mini_batch_size=args.mini_batch_size,
                       scan_checkpoint_group_size=args.child_group)
    layer = TTTLayer(args.dim, args.heads, config, device=device).train()
    x = torch.randn(args.batch, args.frames, args.dim, generator=torch.Generator().manual_seed(1)).to(device)
    return lambda: layer(x).square().mean().backward()


def run_child(args: argparse.Namespace) -> None:
    """One setting in this process; prints one JSON line."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    step = (lm_step if args.child_scope == "lm" else layer_step)(args, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
    else:
        before = resident_mb()
    begin = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = peak_resident_mb()
    seconds = time.perf_counter() - begin
    print(json.dumps({"group": args.child_group, "step_peak_mb": peak - before, "seconds": seconds}))


def child_environment() -> dict[str, str]:
    """The children's environment: on a CPU, glibc returns every freed tensor buffer above 64 KiB to the system at once
    (a fixed mmap threshold), so that the peak resident set follows the tensors alive rather than the heap's history."""
    return os.environ | {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def measure(args: argparse.Namespace, scope: str, group: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child-scope", scope, "--child-group", str(group)]
    for name in ("frames", "dim", "heads", "num_layers", "context", "batch", "mini_batch_size", "variant", "device",
                 "threads"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=child_environment())
    if result.returncode:
        raise SystemExit(f"error: the {scope} run with scan_checkpoint_group_size={group} failed:\n"
                         f"{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--context", type=int, default=750, help="attention context of the main transformer")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--mini-batch-size", type=int, default=16)
    parser.add_argument("--variant", default="mlp", choices=("linear", "mlp"))
    parser.add_argument("--group", type=int, default=16, help="scan_checkpoint_group_size of the checkpointed run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="intra-op CPU threads (0: torch's default)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="the LM also recomputes each layer in backward (moshi-finetune's gradient_checkpointing)")
    parser.add_argument("--scope", default="both", choices=("lm", "layer", "both"),
                        help="a whole LM step, one TTT layer alone, or both")
    parser.add_argument("--child-scope", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-group", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_group is not None:
        run_child(args)
        return
    head_dim = args.dim // args.heads
    hidden = 4 * head_dim if args.variant == "mlp" else head_dim
    per_mini_batch = args.batch * args.heads * (head_dim * hidden * (2 if args.variant == "mlp" else 1)) * 4 / 2**20
    print(f"{args.frames} frames, batch {args.batch}, {args.num_layers} TTT-{args.variant} layers of dim {args.dim} "
          f"({args.heads} heads), mini-batch {args.mini_batch_size}: {-(-args.frames // args.mini_batch_size)} "
          f"mini-batches, {per_mini_batch:.1f} MB of fast weights each per layer; device {args.device}; LM "
          f"gradient_checkpointing {args.gradient_checkpointing}", flush=True)
    print(f"{'scope':>6} | {'scan_checkpoint_group_size':>26} | {'step peak (MB)':>14} | {'step time (s)':>13}",
          flush=True)
    for scope in ("lm", "layer") if args.scope == "both" else (args.scope,):
        plain, grouped = measure(args, scope, 0), measure(args, scope, args.group)
        for run in (plain, grouped):
            print(f"{scope:>6} | {run['group']:>26} | {run['step_peak_mb']:>14.0f} | {run['seconds']:>13.1f}",
                  flush=True)
        peak_ratio, time_ratio = grouped["step_peak_mb"] / plain["step_peak_mb"], grouped["seconds"] / plain["seconds"]
        print(f"{scope:>6} | peak ratio (group {args.group} / none) {peak_ratio:.2f}, time ratio {time_ratio:.2f}",
              flush=True)


if __name__ == "__main__":
    main()

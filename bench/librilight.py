"""LibriLight scoring throughput: the one-pass evaluation against the old two-pass approach, and its memory.

    python bench/librilight.py                      # CPU: speed on a moshiko-structured model, memory at 2k/20k frames
    python bench/librilight.py --frames 400 --skip-memory
    python bench/librilight.py --7b --skip-memory --chunk-frames 24000 --chunk-size 1024   # GPU, 7B random weights

Speed: both score the same teacher-forced frames of one sequence. The one-pass evaluation is what
`moshi_eval.librilight` runs (`LMGen.step_with_logits`: one main-transformer step and dep_q depformer steps per frame).
The old approach, at equal work, advanced the streaming state with `LMGen.step` (main transformer; the depformer is
skipped when the audio is forced) and ran a second per-frame forward of the main transformer and the depformer to get
logits (emulated here by `step_with_logits` on a second copy of the model). Goal: one-pass >= 1.8x the two-pass
frames/s. The saving is one main-transformer step per frame, so the ratio depends on the main : depformer cost split;
the speed model keeps moshiko's structure with a weights split close to moshiko 7B's (about 13 : 1 here, 10 : 1 for 7B).

Memory: peak resident memory of a child process scoring 2k and 20k frames with a small TTT model (goal: flat).

Chunked: frames/s of `LMGen.step_chunk_with_logits` (`--mode chunked`) against per-step `step_with_logits` and a plain
parallel `LMModel.forward` over the same teacher-forced frames, the compute bound (goal: chunked >= 0.8x the parallel
forward). Text policy `pad` is fully parallel; `greedy` goes through speculation, whose acceptance rate is printed (with
random weights the text is chaotic, the worst case for speculation).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from moshi.models.demo_configs import SPEED_LM_CONFIG
from moshi.models.lm import LMGen, LMModel
from moshi.models.lm_utils import teacher_forced_step_inputs
from moshi_eval.scoring.scorer import ScoringItem, StepScorer

SEVEN_B_CONFIG = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "released" / "moshiko_7b_config.json"
MEMORY_CONFIG = {
    "dim": 32, "text_card": 32, "existing_text_padding_id": 3, "n_q": 4, "dep_q": 2, "card": 64, "num_heads": 2,
    "num_layers": 1, "hidden_scale": 2, "causal": True, "context": 250, "gating": "silu", "norm": "rms_norm_f32",
    "positional_embedding": "rope", "depformer_dim": 16, "depformer_num_heads": 1, "depformer_num_layers": 1,
    "depformer_dim_feedforward": 32, "depformer_multi_linear": True, "depformer_weights_per_step": True,
    "depformer_pos_emb": "none", "depformer_context": 4, "delays": [0, 0, 1, 0, 1],
    "ttt": {"layers": "all", "variant": "linear", "mini_batch_size": 16},
}


def random_item(lm: LMModel, frames: int, seed: int) -> ScoringItem:
    generator = torch.Generator().manual_seed(seed)
    own = torch.randint(0, lm.card, (lm.dep_q, frames), generator=generator)
    return ScoringItem("bench", own, None)


def one_pass(lm: LMModel, item: ScoringItem) -> float:
    """Seconds to score the item with the evaluation's scorer."""
    scorer = StepScorer(lm, text_policy="greedy")
    started = time.perf_counter()
    scorer.run([item], batch_size=1, on_sequence=lambda scored: None)
    return time.perf_counter() - started


@torch.no_grad()
def two_pass(lm: LMModel, logits_lm: LMModel, item: ScoringItem) -> float:
    """Seconds for the old approach: `step` to advance the state, plus a second per-frame pass for the logits."""
    advance = LMGen(lm, use_sampling=False)
    second = LMGen(logits_lm, use_sampling=False)
    max_delay = advance.max_delay
    losses = []
    users, owns = teacher_forced_step_inputs(lm, item.own[None].to(lm.device))
    started = time.perf_counter()
    with advance.streaming(1), second.streaming(1):
        for step in range(item.num_frames + max_delay):
            user, forced = users[:, :, step: step + 1], owns[:, :, step: step + 1]
            advance.step(user, forced)
            out = second.step_with_logits(user, forced)
            if out is not None:
                losses.append(F.cross_entropy(out.audio_logits[0, :, 0].float(), out.tokens[0, 1:, 0],
                                              reduction="none"))
    synchronize(lm.device)
    return time.perf_counter() - started


def build_lm(seven_b: bool, config: dict) -> LMModel:
    """The 7B config with random bf16 weights on the GPU, or `config` on the CPU."""
    torch.manual_seed(0)
    if seven_b:
        return LMModel(**json.loads(SEVEN_B_CONFIG.read_text()), device="cuda", dtype=torch.bfloat16).eval()
    return LMModel(**config).eval()


def speed(frames: int, rounds: int, seven_b: bool) -> None:
    lm = build_lm(seven_b, SPEED_LM_CONFIG)
    logits_lm = copy.deepcopy(lm)
    item = random_item(lm, frames, seed=1)
    one_pass(lm, random_item(lm, 8, seed=2))
    one, two = [], []
    for _ in range(rounds):
        one.append(one_pass(lm, item))
        two.append(two_pass(lm, logits_lm, item))
    one_fps, two_fps = frames / statistics.median(one), frames / statistics.median(two)
    model = (f"7B bf16 on {torch.cuda.get_device_name()}" if seven_b else
             f"{torch.get_num_threads()} thread(s), dim {SPEED_LM_CONFIG['dim']} x {SPEED_LM_CONFIG['num_layers']} "
             f"layers, depformer {SPEED_LM_CONFIG['depformer_dim']} x {SPEED_LM_CONFIG['depformer_num_layers']}")
    print(f"speed ({frames} frames, median of {rounds} alternating rounds, {model}):")
    print(f"  one-pass (step_with_logits)        {one_fps:8.1f} frames/s")
    print(f"  two-pass (step + second forward)   {two_fps:8.1f} frames/s")
    print(f"  ratio one-pass / two-pass          {one_fps / two_fps:8.2f}x   (goal >= 1.8x)")


def memory_child(frames: int) -> None:
    torch.manual_seed(0)
    lm = LMModel(**MEMORY_CONFIG).eval()
    item = random_item(lm, frames, seed=3)
    seconds = one_pass(lm, item)
    print(json.dumps({"frames": frames, "peak_mib": peak_resident_kib() / 1024, "seconds": seconds}))


def peak_resident_kib() -> int:
    """This process's peak resident memory: VmHWM on Linux (ru_maxrss can carry the parent's peak over a fork)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory(frame_counts: list[int]) -> None:
    results = []
    for frames in frame_counts:
        child = subprocess.run([sys.executable, __file__, "--memory-child", str(frames)], capture_output=True,
                               text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print("memory (peak resident set of a child process scoring one sequence, small TTT model):")
    for result in results:
        print(f"  {result['frames']:6d} frames  peak {result['peak_mib']:8.1f} MiB  "
              f"({result['frames'] / result['seconds']:.0f} frames/s)")
    growth = results[-1]["peak_mib"] - results[0]["peak_mib"]
    print(f"  growth from {results[0]['frames']} to {results[-1]['frames']} frames: {growth:+.1f} MiB "
          f"({growth / results[0]['peak_mib'] * 100:+.1f}%)   (goal: flat)")


@torch.no_grad()
def chunked_scoring(lm: LMModel, own: torch.Tensor, chunk: int, text_policy: str) -> tuple[float, float]:
    """Seconds to score `own` `[dep_q, T]` in chunks, and the speculation acceptance rate."""
    lm_gen = LMGen(lm, use_sampling=False)
    users, owns = teacher_forced_step_inputs(lm, own[None])
    pad = torch.full((1, users.shape[2]), lm.text_padding_token_id, dtype=torch.long, device=own.device)
    kept = evaluated = 0
    synchronize(own.device)
    started = time.perf_counter()
    with lm_gen.streaming(1):
        for start in range(0, users.shape[2], chunk):
            part = slice(start, start + chunk)
            text = pad[:, part] if text_policy == "pad" else None
            out = lm_gen.step_chunk_with_logits(users[:, :, part], owns[:, :, part], text_replace_tokens=text)
            kept, evaluated = kept + out.transformer_out.shape[1], evaluated + out.main_steps
    synchronize(own.device)
    return time.perf_counter() - started, kept / evaluated


@torch.no_grad()
def parallel_forward(lm: LMModel, own: torch.Tensor) -> float:
    """Seconds for one `LMModel.forward` over the whole sequence (padding text, no user input)."""
    frames = own.shape[-1]
    codes = torch.cat([torch.full((1, frames), lm.text_padding_token_id, device=own.device), own,
                       torch.full((lm.n_q - lm.dep_q, frames), lm.zero_token_id, device=own.device)])[None]
    synchronize(own.device)
    started = time.perf_counter()
    lm(codes)
    synchronize(own.device)
    return time.perf_counter() - started


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def chunked(frames: int, chunk: int, per_step_frames: int, seven_b: bool, forward_frames: int,
            greedy_frames: int) -> None:
    """Chunked against per-step and the parallel forward; `seven_b`: 7B config, random bf16 weights, on the GPU.

    The parallel forward attends over all its frames at once (memory quadratic in length), so it runs on the first
    `forward_frames` frames only; its frames/s is the compute bound per frame. Greedy text runs on the first
    `greedy_frames` frames (with random weights its speculation is the worst case, close to per-step speed). A pass over
    two chunks warms up first (allocator, kernel selection for the chunk's shapes).
    """
    lm = build_lm(seven_b, SPEED_LM_CONFIG)
    own = random_item(lm, frames, seed=4).own.to(lm.device)
    forward_part = own[:, : min(frames, forward_frames)]
    model = "7B bf16, random weights" if seven_b else f"dim {SPEED_LM_CONFIG['dim']} x {SPEED_LM_CONFIG['num_layers']}"
    threads = torch.get_num_threads()
    print(f"chunked ({model}, {frames} frames, chunk {chunk}, device {lm.device}, {threads} thread(s)):",
          flush=True)
    parallel_forward(lm, forward_part)
    forward_fps = forward_part.shape[1] / min(parallel_forward(lm, forward_part) for _ in range(2))
    print(f"  parallel LMModel.forward           {forward_fps:8.1f} frames/s   (compute bound, {forward_part.shape[1]} "
          "frames)", flush=True)
    chunked_scoring(lm, own[:, : 2 * chunk], chunk, "pad")
    pad_seconds, _ = chunked_scoring(lm, own, chunk, "pad")
    pad_fps = frames / pad_seconds
    print(f"  chunked, pad text                  {pad_fps:8.1f} frames/s   {pad_fps / forward_fps:.2f}x forward "
          f"(goal >= 0.8x), {pad_seconds:.1f} s in all", flush=True)
    step_fps = per_step_frames / one_pass(lm, random_item(lm, per_step_frames, seed=5))
    print(f"  per-step step_with_logits          {step_fps:8.1f} frames/s   (chunked pad is {pad_fps / step_fps:.1f}x)",
          flush=True)
    greedy_part = own[:, : min(frames, greedy_frames)]
    greedy_seconds, acceptance = chunked_scoring(lm, greedy_part, chunk, "greedy")
    greedy_fps = greedy_part.shape[1] / greedy_seconds
    print(f"  chunked, greedy text               {greedy_fps:8.1f} frames/s   {greedy_fps / forward_fps:.2f}x forward, "
          f"speculation acceptance {acceptance:.2f}, {greedy_seconds:.1f} s for {greedy_part.shape[1]} frames",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=250, help="frames per speed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating speed rounds (median reported)")
    parser.add_argument("--memory-frames", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the speed part")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--chunk-frames", type=int, default=512, help="frames of the chunked comparison")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--per-step-frames", type=int, default=32, help="frames timed per step for the comparison")
    parser.add_argument("--skip-chunked", action="store_true")
    parser.add_argument("--7b", dest="seven_b", action="store_true",
                        help="speed and chunked parts on the GPU with the 7B config, random bf16 weights (e.g. "
                             "--chunk-frames 24000 --chunk-size 1024 --skip-memory): the < 60 s goal for 24k frames")
    parser.add_argument("--forward-frames", type=int, default=4096, help="frames of the parallel forward")
    parser.add_argument("--greedy-frames", type=int, default=4096, help="frames of the greedy-text chunked run")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        torch.set_num_threads(1)
        memory_child(args.memory_child)
        return
    torch.set_num_threads(args.threads)
    if not args.skip_speed:
        speed(args.frames, args.rounds, args.seven_b)
    if not args.skip_chunked:
        chunked(args.chunk_frames, args.chunk_size, args.per_step_frames, args.seven_b, args.forward_frames,
                args.greedy_frames)
    if not args.skip_memory:
        memory(args.memory_frames)


if __name__ == "__main__":
    main()

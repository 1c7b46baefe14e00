"""LibriLight scoring throughput: the one-pass evaluation against the old two-pass approach, and its memory.

    python bench/librilight.py                      # CPU: speed on a moshiko-structured model, memory at 2k/20k frames
    python bench/librilight.py --frames 400 --skip-memory

Speed: both score the same teacher-forced frames of one sequence. The one-pass evaluation is what
`moshi_eval.librilight` runs (`LMGen.step_with_logits`: one main-transformer step and dep_q depformer steps per frame).
The old approach, at equal work, advanced the streaming state with `LMGen.step` (main transformer; the depformer is
skipped when the audio is forced) and ran a second per-frame forward of the main transformer and the depformer to get
logits (emulated here by `step_with_logits` on a second copy of the model). Goal: one-pass >= 1.8x the two-pass frames/s.
The saving is one main-transformer step per frame, so the ratio depends on the main : depformer cost split; the speed
model keeps moshiko's structure with a weights split close to moshiko 7B's (about 13 : 1 here, 10 : 1 for 7B).

Memory: peak resident memory of a child process scoring 2k and 20k frames with a small TTT model (goal: flat).
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

from moshi.models.lm import LMGen, LMModel
from moshi_eval.librilight.scoring import ScoringItem, StepScorer

DELAYS = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
SPEED_CONFIG = {
    "dim": 768, "text_card": 32000, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8, "card": 2048,
    "num_heads": 12, "num_layers": 8, "hidden_scale": 4.125, "causal": True, "context": 3000, "max_period": 10000,
    "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 128,
    "depformer_dim_feedforward": 528, "depformer_num_heads": 4, "depformer_num_layers": 2,
    "depformer_multi_linear": True, "depformer_context": 8, "depformer_pos_emb": "none",
    "depformer_weights_per_step": True, "delays": DELAYS,
}
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


def forced_inputs(lm: LMModel, item: ScoringItem, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    frames = item.num_frames
    user = torch.full((1, lm.n_q - lm.dep_q, 1), lm.zero_token_id, dtype=torch.long)
    forced = torch.zeros(1, lm.dep_q, 1, dtype=torch.long)
    for k in range(lm.dep_q):
        frame = step - lm.delays[1 + k]
        if 0 <= frame < frames:
            forced[0, k, 0] = item.own[k, frame]
    return user, forced


@torch.no_grad()
def two_pass(lm: LMModel, logits_lm: LMModel, item: ScoringItem) -> float:
    """Seconds for the old approach: `step` to advance the state, plus a second per-frame pass for the logits."""
    advance = LMGen(lm, use_sampling=False)
    second = LMGen(logits_lm, use_sampling=False)
    max_delay = advance.max_delay
    losses = []
    started = time.perf_counter()
    with advance.streaming(1), second.streaming(1):
        for step in range(item.num_frames + max_delay):
            user, forced = forced_inputs(lm, item, step)
            advance.step(user, forced)
            out = second.step_with_logits(user, forced)
            if out is not None:
                losses.append(F.cross_entropy(out.audio_logits[0, :, 0].float(), out.tokens[0, 1:, 0],
                                              reduction="none"))
    return time.perf_counter() - started


def speed(frames: int, rounds: int) -> None:
    torch.manual_seed(0)
    lm = LMModel(**SPEED_CONFIG).eval()
    logits_lm = copy.deepcopy(lm)
    item = random_item(lm, frames, seed=1)
    one_pass(lm, random_item(lm, 8, seed=2))
    one, two = [], []
    for _ in range(rounds):
        one.append(one_pass(lm, item))
        two.append(two_pass(lm, logits_lm, item))
    one_fps, two_fps = frames / statistics.median(one), frames / statistics.median(two)
    print(f"speed ({frames} frames, median of {rounds} alternating rounds, {torch.get_num_threads()} thread(s), "
          f"dim {SPEED_CONFIG['dim']} x {SPEED_CONFIG['num_layers']} layers, depformer "
          f"{SPEED_CONFIG['depformer_dim']} x {SPEED_CONFIG['depformer_num_layers']}):")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=250, help="frames per speed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating speed rounds (median reported)")
    parser.add_argument("--memory-frames", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the speed part")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        torch.set_num_threads(1)
        memory_child(args.memory_child)
        return
    torch.set_num_threads(args.threads)
    if not args.skip_speed:
        speed(args.frames, args.rounds)
    if not args.skip_memory:
        memory(args.memory_frames)


if __name__ == "__main__":
    main()

"""Greedy text in chunked scoring: `LMGen.step_chunk_with_logits` against per-step `step_with_logits`, same sequence.

    python bench/greedy.py                               # CPU: the table of issue 21 (about 15 minutes, 1 thread)
    python bench/greedy.py --cases audio85 --rounds 2    # one row
    python bench/greedy.py --7b --cases random audio85 --frames 1000 --rounds 1   # GPU, 7B config, random bf16 weights

Both sides score the same teacher-forced sequence with greedy text, in alternating rounds (order flipped every round);
the table gives the median ratio of their frames/s and its spread over the rounds. The chunked side keeps no text
logits, as `moshi_eval`'s scorers ask (the per-step side returns them). Every round asserts that the two
return the same text and audio tokens, and audio losses equal to 1e-4 (float32; bf16 on the GPU rounds the two paths
differently, so the share of equal tokens and the largest loss difference are only reported).

The model is the speed model of the other benchmarks (`SPEED_LM_CONFIG`) at dim 256 x 6 layers (a TTT-MLP layer in
layers 2 and 3 in the TTT rows, mini-batches of 16; `finetune` rows build them with `TTTConfig.from_moshi_finetune` on
a section like the users' training YAMLs). Random weights make the text argmax chaotic: speculation's worst case. A
trained model's text follows the audio, mostly padding between words; `audio<N>` rows emulate that on the same random
weights: the text embedding is scaled by 0.1 (the text fed back barely matters) and a bias on the padding logit makes
about N % of the greedy text padding (the share reached is printed). Acceptance is the share of main-transformer steps
kept, main/frame the main-transformer steps per scored frame (1 for forced text).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch.nn import functional as F

from moshi.models.demo_configs import SPEED_LM_CONFIG
from moshi.models.lm import LMGen, LMModel
from moshi.models.lm_utils import teacher_forced_step_inputs
from moshi.modules.ttt import TTTConfig

SEVEN_B_CONFIG = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "released" / "moshiko_7b_config.json"
BENCH_CONFIG = SPEED_LM_CONFIG | {"dim": 256, "num_layers": 6, "num_heads": 4, "bias_proj": True}
TTT_SECTIONS = {
    "none": None,
    "ttt": {"layers": "2,3", "variant": "mlp", "mini_batch_size": 16},
    "finetune": {"enable": True, "layers": "2,3", "base_lr": 1.0, "mini_batch_size": 16, "use_rope": True,
                 "rope_theta": 10000.0},
}
SEVEN_B_TTT_LAYERS = "29,30,31"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    pad_share: float | None  # None: random weights as drawn
    batch_size: int
    ttt: str


CASES = {
    "random": [Case("random", None, 1, ttt) for ttt in TTT_SECTIONS] +
              [Case("random", None, 4, ttt) for ttt in TTT_SECTIONS],
    "audio67": [Case("audio67", 0.67, 1, "none"), Case("audio67", 0.67, 1, "ttt"), Case("audio67", 0.67, 4, "none"),
                Case("audio67", 0.67, 4, "ttt")],
    "audio85": [Case("audio85", 0.85, 1, "none"), Case("audio85", 0.85, 1, "ttt")],
    "audio99": [Case("audio99", 0.99, 1, "ttt")],
}


@dataclasses.dataclass
class Run:
    seconds: float
    tokens: torch.Tensor  # [B, dep_q + 1, T]
    losses: torch.Tensor  # [B, dep_q, T]
    main_steps: int = 0


def build_lm(case: Case, seven_b: bool) -> LMModel:
    torch.manual_seed(0)
    if seven_b:
        config = json.loads(SEVEN_B_CONFIG.read_text()) | {"bias_proj": True}
        if case.ttt != "none":
            config["ttt"] = _ttt_config(case.ttt, SEVEN_B_TTT_LAYERS)
        return LMModel(**config, device="cuda", dtype=torch.bfloat16).eval()
    config = dict(BENCH_CONFIG)
    if case.ttt != "none":
        config["ttt"] = _ttt_config(case.ttt, "2,3")
    return LMModel(**config).eval()


def _ttt_config(kind: str, layers: str) -> TTTConfig:
    section = dict(TTT_SECTIONS[kind] or {}) | {"layers": layers}
    if kind == "finetune":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return TTTConfig.from_moshi_finetune(section)
    return TTTConfig.from_dict(section)


@torch.no_grad()
def make_audio_driven(lm: LMModel, users: torch.Tensor, owns: torch.Tensor, pad_share: float) -> None:
    """Scale the text embedding by 0.1 and bias the padding logit so that about `pad_share` of the steps' text argmax
    is padding (measured on a teacher-forced pass with padding text fed back)."""
    lm.text_emb.weight.mul_(0.1)
    pad = lm.text_padding_token_id
    lm_gen = LMGen(lm, use_sampling=False)
    text = torch.full((users.shape[0], users.shape[2]), pad, dtype=torch.long, device=users.device)
    with lm_gen.streaming(users.shape[0]):
        logits = lm_gen.step_chunk_with_logits(users, owns, text_replace_tokens=text).text_logits[:, 0].float()
    others = logits.clone()
    others[..., pad] = float("-inf")
    margin = others.max(dim=-1).values - logits[..., pad]
    lm.text_linear.bias[pad] += torch.quantile(margin.flatten(), pad_share)


def losses_of(audio_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy `[B, dep_q, T]` of the own audio tokens under their logits `[B, dep_q, T, card]`."""
    return F.cross_entropy(audio_logits.float().flatten(0, 2), tokens[:, 1:].flatten(), reduction="none").view(
        tokens[:, 1:].shape)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def per_step(lm: LMModel, users: torch.Tensor, owns: torch.Tensor) -> Run:
    lm_gen = LMGen(lm, use_sampling=False)
    tokens, logits = [], []
    synchronize(users.device)
    started = time.perf_counter()
    with lm_gen.streaming(users.shape[0]):
        for step in range(users.shape[2]):
            out = lm_gen.step_with_logits(users[:, :, step: step + 1], owns[:, :, step: step + 1])
            if out is not None:
                tokens.append(out.tokens)
                logits.append(out.audio_logits)
    synchronize(users.device)
    seconds = time.perf_counter() - started
    all_tokens = torch.cat(tokens, dim=2)
    return Run(seconds, all_tokens, losses_of(torch.cat(logits, dim=2), all_tokens), users.shape[2])


@torch.no_grad()
def chunked(lm: LMModel, users: torch.Tensor, owns: torch.Tensor, chunk: int) -> Run:
    lm_gen = LMGen(lm, use_sampling=False)
    outputs = []
    synchronize(users.device)
    started = time.perf_counter()
    with lm_gen.streaming(users.shape[0]):
        for start in range(0, users.shape[2], chunk):
            part = slice(start, start + chunk)
            outputs.append(lm_gen.step_chunk_with_logits(users[:, :, part], owns[:, :, part], keep_text_logits=False))
    synchronize(users.device)
    seconds = time.perf_counter() - started
    tokens = torch.cat([out.tokens for out in outputs], dim=2)
    logits = torch.cat([out.audio_logits for out in outputs], dim=2)
    return Run(seconds, tokens, losses_of(logits, tokens), sum(out.main_steps for out in outputs))


def compare(case: Case, step: Run, chunk: Run, exact: bool) -> tuple[float, float]:
    """The share of equal tokens and the largest loss difference; in float32 (`exact`) anything but equal tokens and
    losses within 1e-4 stops the benchmark (bf16 on a GPU rounds the two paths differently: reported only)."""
    agree = float((step.tokens == chunk.tokens).float().mean())
    gap = float((step.losses - chunk.losses).abs().max())
    if exact and agree < 1:
        raise SystemExit(f"{case}: chunked tokens differ from per-step tokens")
    if exact and gap > 1e-4:
        raise SystemExit(f"{case}: chunked losses differ from per-step losses by {gap:.1e}")
    return agree, gap


def run_case(case: Case, frames: int, rounds: int, chunk: int, seven_b: bool) -> dict:
    lm = build_lm(case, seven_b)
    generator = torch.Generator().manual_seed(1)
    own = torch.randint(0, lm.card, (case.batch_size, lm.dep_q, frames), generator=generator).to(lm.device)
    users, owns = teacher_forced_step_inputs(lm, own)
    if case.pad_share is not None:
        make_audio_driven(lm, users, owns, case.pad_share)
    warm = slice(0, 2 * max(lm.delays) + 8)
    chunked(lm, users[:, :, warm], owns[:, :, warm], chunk)
    per_step(lm, users[:, :, warm], owns[:, :, warm])
    ratios, step_fps, chunk_fps, agreements, gaps, main_steps = [], [], [], [], [], []
    for round_index in range(rounds):
        order = (per_step, chunked) if round_index % 2 == 0 else (chunked, per_step)
        runs = {}
        for method in order:
            runs[method.__name__] = (method(lm, users, owns) if method is per_step else
                                     method(lm, users, owns, chunk))
        step, fast = runs["per_step"], runs["chunked"]
        agree, gap = compare(case, step, fast, exact=not seven_b)
        agreements.append(agree)
        gaps.append(gap)
        ratios.append(step.seconds / fast.seconds)
        step_fps.append(frames * case.batch_size / step.seconds)
        chunk_fps.append(frames * case.batch_size / fast.seconds)
        main_steps.append(fast.main_steps)
    pad = float((fast.tokens[:, 0] == lm.text_padding_token_id).float().mean())
    steps = users.shape[2]
    return {"case": case.name, "batch": case.batch_size, "ttt": case.ttt, "pad_share": pad,
            "step_fps": statistics.median(step_fps), "chunk_fps": statistics.median(chunk_fps),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "acceptance": steps / statistics.median(main_steps),
            "main_per_frame": statistics.median(main_steps) / steps, "tokens_equal": min(agreements),
            "loss_gap": max(gaps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--ttt", nargs="+", choices=sorted(TTT_SECTIONS), default=list(TTT_SECTIONS),
                        help="which TTT variants to run")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median and spread reported)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="steps per step_chunk_with_logits call")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--7b", dest="seven_b", action="store_true",
                        help=f"7B config, random bf16 weights, on the GPU (TTT rows: layers {SEVEN_B_TTT_LAYERS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="this TTT config reads each mini-batch non-causally")
    device = f"7B bf16 on {torch.cuda.get_device_name()}" if args.seven_b else (
        f"CPU, {torch.get_num_threads()} thread(s), dim {BENCH_CONFIG['dim']} x {BENCH_CONFIG['num_layers']} layers")
    print(f"greedy chunked vs per-step ({args.frames} frames, chunks of {args.chunk_size}, median of {args.rounds} "
          f"alternating rounds [min-max], {device}):")
    print("| case | B | TTT | PAD share | per-step frames/s | chunked frames/s | chunked / per-step | acceptance | "
          "main/frame | equal tokens | loss gap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.cases:
        for case in CASES[name]:
            if case.ttt not in args.ttt or case.batch_size not in args.batch_sizes:
                continue
            row = run_case(case, args.frames, args.rounds, args.chunk_size, args.seven_b)
            print(f"| {row['case']} | {row['batch']} | {row['ttt']} | {row['pad_share']:.0%} | {row['step_fps']:.1f} | "
                  f"{row['chunk_fps']:.1f} | **{row['ratio']:.2f}x** [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}] | "
                  f"{row['acceptance']:.2f} | {row['main_per_frame']:.2f} | {row['tokens_equal']:.1%} | "
                  f"{row['loss_gap']:.0e} |", flush=True)


if __name__ == "__main__":
    main()

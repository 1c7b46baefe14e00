"""Paper-metrics scoring throughput: our batched scoring against one `LMModel.forward` per file (our users' method), on
the same utterances and the same model.

    python bench/paper_metrics.py                                  # CPU, moshiko-structured model, sWUGGY-like lengths
    python bench/paper_metrics.py --lengths story --utterances 40  # StoryCloze-like lengths
    python bench/paper_metrics.py --7b --utterances 2000           # GPU, 7B config with random bf16 weights

Both score pre-encoded utterances (Mimi encoding is the same for both and left out) with the text and user streams
set to the zero token. Ours: `ChunkedScorer` with text policy `zero` (what `moshi_eval.paper_metrics` runs): utterances
longest first, each call up to `--batch-size` of them and `--chunk-size` steps over all. Theirs: for each file, one
parallel `LMModel.forward` over `[zero text, codes, zero user]` and the weighted cross-entropy over the forward's mask.
The two are timed in alternating rounds (order flipped every round, median reported, with the spread of the per-round
ratios) and their per-utterance log-probabilities are compared (in float32 they must agree to 1e-4 relative; bf16 on
the GPU is only reported). Goals on a CPU: ours >= 4x their utterances/s at sWUGGY length, >= 1.5x at StoryCloze
length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from moshi.models.demo_configs import SPEED_LM_CONFIG
from moshi.models.lm import LMModel
from moshi_eval.paper_metrics.scores import utterance_score
from moshi_eval.scoring.scorer import ChunkedScorer, ScoringItem, token_cross_entropy

SEVEN_B_CONFIG = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "released" / "moshiko_7b_config.json"
LENGTHS = {  # frames at 12.5 Hz: sWUGGY words 0.5-1.1 s, sBLIMP sentences 1.2-3.2 s, StoryCloze stories 8-16 s
    "swuggy": (6, 14),
    "sblimp": (15, 40),
    "story": (100, 200),
}
CPU_GOALS = {"swuggy": 4.0, "story": 1.5}


def build_lm(seven_b: bool) -> LMModel:
    torch.manual_seed(0)
    if seven_b:
        return LMModel(**json.loads(SEVEN_B_CONFIG.read_text()), device="cuda", dtype=torch.bfloat16).eval()
    return LMModel(**SPEED_LM_CONFIG).eval()


def utterances(lm: LMModel, count: int, lengths: tuple[int, int], seed: int) -> list[ScoringItem]:
    generator = torch.Generator().manual_seed(seed)
    low, high = lengths
    sizes = torch.randint(low, high + 1, (count,), generator=generator).tolist()
    return [ScoringItem(f"u{index}", torch.randint(0, lm.card, (lm.dep_q, frames), generator=generator))
            for index, frames in enumerate(sizes)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def batched(lm: LMModel, items: list[ScoringItem], batch_size: int, chunk_size: int) -> tuple[float, dict[str, float]]:
    """Seconds for our scoring of every item, and each item's sum log-probability."""
    sums: dict[str, float] = {}
    scorer = ChunkedScorer(lm, text_policy="zero", chunk_size=chunk_size)
    synchronize(lm.device)
    started = time.perf_counter()
    scorer.run(items, batch_size, lambda scored: sums.__setitem__(
        scored.sequence_id, utterance_score(scored.codebook_losses).sum_logprob))
    synchronize(lm.device)
    return time.perf_counter() - started, sums


@torch.no_grad()
def per_file_forward(lm: LMModel, items: list[ScoringItem]) -> tuple[float, dict[str, float]]:
    """Seconds for one parallel forward per item (the users' method), and each item's sum log-probability."""
    sums: dict[str, float] = {}
    synchronize(lm.device)
    started = time.perf_counter()
    for item in items:
        own = item.own.to(lm.device)
        frames = own.shape[1]
        zero_text = torch.full((1, frames), lm.zero_token_id, device=lm.device)
        zero_user = torch.full((lm.n_q - lm.dep_q, frames), lm.zero_token_id, device=lm.device)
        out = lm(torch.cat([zero_text, own, zero_user])[None])
        losses = token_cross_entropy(out.logits[0].nan_to_num(), own)
        sums[item.sequence_id] = -float(losses[out.mask[0]].double().sum())
    synchronize(lm.device)
    return time.perf_counter() - started, sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=192, help="utterances per round")
    parser.add_argument("--lengths", choices=sorted(LENGTHS), default="swuggy", help="length range of the utterances")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--7b", dest="seven_b", action="store_true", help="7B config, random bf16 weights, on the GPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = build_lm(args.seven_b)
    items = utterances(lm, args.utterances, LENGTHS[args.lengths], seed=1)
    warm = items[: min(len(items), args.batch_size)]
    batched(lm, warm, args.batch_size, args.chunk_size)
    per_file_forward(lm, warm)
    ours, theirs = [], []
    for round_index in range(args.rounds):
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                seconds, our_sums = batched(lm, items, args.batch_size, args.chunk_size)
                ours.append(seconds)
            else:
                seconds, their_sums = per_file_forward(lm, items)
                theirs.append(seconds)
    ours_ups, theirs_ups = len(items) / statistics.median(ours), len(items) / statistics.median(theirs)
    ratios = [their / our for our, their in zip(ours, theirs, strict=True)]
    gap = max(abs(our_sums[key] - their_sums[key]) / abs(their_sums[key]) for key in their_sums)
    frames = sum(item.num_frames for item in items)
    model = (f"7B bf16 on {torch.cuda.get_device_name()}" if args.seven_b else
             f"{torch.get_num_threads()} thread(s), dim {SPEED_LM_CONFIG['dim']} x {SPEED_LM_CONFIG['num_layers']} "
             f"layers, depformer {SPEED_LM_CONFIG['depformer_dim']} x {SPEED_LM_CONFIG['depformer_num_layers']}")
    print(f"paper metrics scoring ({len(items)} {args.lengths}-like utterances, {frames} frames, batch "
          f"{args.batch_size}, median of {args.rounds} alternating rounds, {model}):")
    print(f"  batched chunked scoring (ours)     {ours_ups:8.1f} utterances/s")
    print(f"  one LMModel.forward per file       {theirs_ups:8.1f} utterances/s")
    goal = "" if args.seven_b or args.lengths not in CPU_GOALS else f"   (goal >= {CPU_GOALS[args.lengths]}x on CPU)"
    print(f"  ratio ours / per-file              {ours_ups / theirs_ups:8.2f}x   rounds {min(ratios):.2f}-"
          f"{max(ratios):.2f}x{goal}")
    print(f"  largest relative difference of the sum log-probabilities: {gap:.1e}")
    if not args.seven_b and gap > 1e-4:
        raise SystemExit("the two methods disagree beyond float32 rounding")


if __name__ == "__main__":
    main()

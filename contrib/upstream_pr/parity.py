"""The numbers behind `check.sh`: the same small random models and inputs through three `moshi` packages.

    python parity.py model DIR        # config, weights (the importable moshi's own initialisation) and inputs
    python parity.py run DIR NAME     # every scenario with the importable moshi -> DIR/NAME.safetensors
    python parity.py compare DIR      # patched vs fork (logits, 1e-5) and patched vs upstream (tokens, exact)
    python parity.py time             # step_with_logits / step time ratio with the importable moshi (CPU)

`run` is called three times, each with another `moshi` importable: the patched upstream ("patched"), this repository's
fork ("fork") and unpatched upstream 0.2.13 ("upstream", which has no `step_with_logits`: only the `step` scenarios).
Only `torch`, `safetensors` and `moshi.models.lm.{LMModel, LMGen}` are used, so the file runs under all three.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

BATCH, FRAMES, WEIGHTS_SEED, INPUTS_SEED = 2, 10, 1234, 4321
TOLERANCE = 1e-5
_MOSHIKO_DELAYS = [0] + ([0] + [1] * 7) * 2
CONFIGS = {
    "moshiko_tiny": {
        "delays": _MOSHIKO_DELAYS, "n_q": 16, "dep_q": 8, "card": 40, "text_card": 48, "dim": 32, "num_heads": 4,
        "num_layers": 2, "hidden_scale": 4.125, "causal": True, "context": 6, "max_period": 10000, "gating": "silu",
        "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 16, "depformer_dim_feedforward": 66,
        "depformer_num_heads": 2, "depformer_num_layers": 2, "depformer_multi_linear": True, "depformer_context": 8,
        "depformer_gating": "silu", "depformer_pos_emb": "none", "depformer_weights_per_step": True,
    },
    "upstream_test_lm": {
        "delays": [0, 1, 2, 4], "n_q": 3, "dep_q": 3, "card": 32, "text_card": 48, "dim": 16, "num_layers": 2,
        "num_heads": 1, "hidden_scale": 1, "depformer_dim": 16, "depformer_multi_linear": True,
        "depformer_weights_per_step": True, "depformer_weights_per_step_schedule": [0, 1, 1],
        "depformer_low_rank_embeddings": 8, "depformer_num_heads": 1, "depformer_gating": "silu", "context": 4,
    },
}
"""A scaled-down moshiko (acoustic delay, context 6 over 11 steps) and the model of upstream's tests/test_lm.py."""

SCENARIOS = {
    # name: (method, LMGen keywords, teacher-forced audio, forced text, streaming events)
    "forced_greedy": ("step_with_logits", {"use_sampling": False}, True, False, {}),
    "forced_sampled": ("step_with_logits", {}, True, False, {}),
    "free_greedy": ("step_with_logits", {"use_sampling": False}, False, False, {}),
    "free_sampled": ("step_with_logits", {"top_k": 5, "top_k_text": 5}, False, False, {}),
    "forced_text_and_audio": ("step_with_logits", {}, True, True, {}),
    "reset_and_exec_mask": ("step_with_logits", {"use_sampling": False}, True, False,
                            {4: ("reset", [True, False]), 7: ("exec_mask", [True, False]), 8: ("exec_mask", [1, 1])}),
    "step_sampled": ("step", {}, False, False, {}),
    "step_forced_sampled": ("step", {"temp_text": 1.0}, True, False, {}),
    "step_small_top_k": ("step", {"top_k": 3, "top_k_text": 2, "temp": 1.2}, False, False, {}),
    "step_greedy": ("step", {"use_sampling": False}, False, False, {}),
}
"""Scenario i of a model runs after torch.manual_seed(100 + i); events happen before the given step."""


def make_model(folder: Path) -> None:
    from moshi.models.lm import LMModel

    folder.mkdir(parents=True, exist_ok=True)
    inputs, generator = {}, torch.Generator().manual_seed(INPUTS_SEED)
    for name, config in CONFIGS.items():
        torch.manual_seed(WEIGHTS_SEED)
        lm = LMModel(**config).eval()
        save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, folder / f"{name}.safetensors")
        steps = FRAMES + max(config["delays"])
        inputs[f"{name}.user"] = torch.randint(0, config["card"], (BATCH, config["n_q"] - config["dep_q"], steps),
                                               generator=generator)
        inputs[f"{name}.audio"] = torch.randint(0, config["card"], (BATCH, config["dep_q"], steps), generator=generator)
        inputs[f"{name}.text"] = torch.randint(0, config["text_card"], (BATCH, steps), generator=generator)
    save_file(inputs, folder / "inputs.safetensors")


def _scenario(lm_gen, method: str, inputs: dict, forced_audio: bool, forced_text: bool, events: dict) -> dict:
    """Stack what `method` returned at each step; `returned` `[S]` says which steps returned something."""
    user, audio, text = inputs["user"], inputs["audio"], inputs["text"]
    fields: dict[str, list] = {}
    returned = []
    with lm_gen.streaming(BATCH):
        for step in range(user.shape[2]):
            if step in events:
                kind, mask = events[step]
                mask = torch.tensor(mask, dtype=torch.bool)
                if kind == "reset":
                    lm_gen.reset_streaming(mask)
                else:
                    lm_gen.set_exec_mask(mask)
            now = slice(step, step + 1)
            keywords = {"text_replace_tokens": text[:, step]} if forced_text else {}
            out = getattr(lm_gen, method)(user[:, :, now], audio[:, :, now] if forced_audio else None, **keywords)
            returned.append(out is not None)
            if out is None:
                continue
            items = {"tokens": out} if method == "step" else vars(out)
            for key, value in items.items():
                fields.setdefault(key, []).append(value)
    stacked = {key: torch.stack(values) for key, values in fields.items()}
    return {**stacked, "returned": torch.tensor(returned)}


def run(folder: Path, name: str) -> None:
    import moshi
    from moshi.models.lm import LMGen, LMModel

    print(f"{name}: moshi {moshi.__version__} from {moshi.__file__}", file=sys.stderr)
    has_logits = hasattr(LMGen, "step_with_logits")
    if (name != "upstream") != has_logits:
        raise SystemExit(f"error: {name} run with a moshi that {'has' if has_logits else 'lacks'} step_with_logits")
    inputs, results = load_file(folder / "inputs.safetensors"), {}
    for model_name, config in CONFIGS.items():
        lm = LMModel(**config).eval()
        lm.load_state_dict(load_file(folder / f"{model_name}.safetensors"))
        model_inputs = {key: inputs[f"{model_name}.{key}"] for key in ("user", "audio", "text")}
        for index, (scenario, (method, keywords, forced_audio, forced_text, events)) in enumerate(SCENARIOS.items()):
            if method == "step_with_logits" and not has_logits:
                continue
            torch.manual_seed(100 + index)
            outputs = _scenario(LMGen(lm, **keywords), method, model_inputs, forced_audio, forced_text, events)
            results.update({f"{model_name}.{scenario}.{key}": value for key, value in outputs.items()})
    save_file(results, folder / f"{name}.safetensors")


def compare(folder: Path) -> int:
    """Print one line per model and scenario; 1 when a token differs or a logit differs by more than TOLERANCE.

    Logits and transformer outputs are compared where the returned frame exists (tokens not `ungenerated`, -2): for
    an item outside the exec mask both return placeholders there.
    """
    runs = {name: load_file(folder / f"{name}.safetensors") for name in ("patched", "fork", "upstream")}
    failures, worst = 0, 0.0
    for model_name in CONFIGS:
        for scenario, (method, *_) in SCENARIOS.items():
            prefix = f"{model_name}.{scenario}."
            others = ("fork",) if method == "step_with_logits" else ("upstream", "fork")
            generated = (runs["patched"][f"{prefix}tokens"] != -2).flatten(2).all(-1)  # [returned steps, B]
            for other in others:
                keys = sorted(key for key in runs["patched"] if key.startswith(prefix))
                notes = [] if generated.all() else [f"{int((~generated).sum())} placeholder frames skipped"]
                for key in keys:
                    mine, theirs = runs["patched"][key], runs[other][key]
                    if mine.dtype.is_floating_point:
                        difference = float((mine[generated] - theirs[generated]).abs().max())
                        worst = max(worst, difference)
                        notes.append(f"{key.removeprefix(prefix)} {difference:.1e}")
                        failures += difference > TOLERANCE
                    else:
                        equal = torch.equal(mine, theirs)
                        notes.append(f"{key.removeprefix(prefix)} {'equal' if equal else 'DIFFER'}")
                        failures += not equal
                print(f"{model_name:17} {scenario:22} patched vs {other:8}: {', '.join(notes)}")
    print(f"largest logit / transformer_out difference: {worst:.1e} (tolerance {TOLERANCE:g}); "
          f"{'all equal' if not failures else f'{failures} differences'}")
    return 1 if failures else 0


TIMED_CONFIG = {
    "delays": _MOSHIKO_DELAYS, "n_q": 16, "dep_q": 8, "card": 2048, "text_card": 32000, "dim": 512, "num_heads": 8,
    "num_layers": 8, "hidden_scale": 4.125, "causal": True, "context": 250, "max_period": 10000, "gating": "silu",
    "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 256, "depformer_dim_feedforward": 1024,
    "depformer_num_heads": 8, "depformer_num_layers": 4, "depformer_multi_linear": True, "depformer_context": 8,
    "depformer_gating": "silu", "depformer_pos_emb": "none", "depformer_weights_per_step": True,
}
"""The moshiko structure at dim 512 with 8 layers (depformer 256 wide, 4 layers), float32."""


def timing(calls: int) -> None:
    """Median CPU time (and wall time) of each method over `calls` calls each on one stream, greedy, B = 1, one torch
    thread: CPU time counts the work of this process only, so the ratio holds on a machine shared with other jobs.
    The calls alternate A B B A ... so that both methods see the same stream length and the same load."""
    from moshi.models.lm import LMGen, LMModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    lm = LMModel(**TIMED_CONFIG).eval()
    lm_gen = LMGen(lm, use_sampling=False)
    user = torch.randint(0, lm.card, (1, lm.n_q - lm.dep_q, 1))
    own = torch.randint(0, lm.card, (1, lm.dep_q, 1))
    methods = ("step", "step_with_logits")
    for forced in (None, own):
        cpu: dict[str, list[float]] = {method: [] for method in methods}
        wall: dict[str, list[float]] = {method: [] for method in methods}
        with torch.no_grad(), lm_gen.streaming(1):
            for _ in range(lm_gen.max_delay + 3):
                lm_gen.step_with_logits(user, forced)
            for index in range(2 * calls):
                method = methods[(index + index // 2) % 2]
                cpu_start, wall_start = time.process_time(), time.perf_counter()
                getattr(lm_gen, method)(user, forced)
                cpu[method].append(time.process_time() - cpu_start)
                wall[method].append(time.perf_counter() - wall_start)
        (cpu_step, cpu_logits), (wall_step, wall_logits) = (
            [statistics.median(times[method]) * 1e3 for method in methods] for times in (cpu, wall))
        what = "teacher-forced audio (step skips the depformer)" if forced is not None else "greedy, no replacement"
        print(f"{what}: CPU time step {cpu_step:.1f} ms, step_with_logits {cpu_logits:.1f} ms, ratio "
              f"{cpu_logits / cpu_step:.3f}; wall {wall_step:.1f} / {wall_logits:.1f} ms, ratio "
              f"{wall_logits / wall_step:.3f} (medians of {calls} calls each)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("model").add_argument("folder", type=Path)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("folder", type=Path)
    run_parser.add_argument("name", choices=("patched", "fork", "upstream"))
    commands.add_parser("compare").add_argument("folder", type=Path)
    commands.add_parser("time").add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    if args.command == "model":
        make_model(args.folder)
    elif args.command == "run":
        run(args.folder, args.name)
    elif args.command == "compare":
        return compare(args.folder)
    else:
        timing(args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())

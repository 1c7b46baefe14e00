"""`python -m moshi_eval.librilight`: evaluate a checkpoint, run the demo, or `compare` result files.

Settings come from the defaults, then `--config eval.yaml`, then the flags given on the command line (flags win).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from ..scoring.models import ModelSpec
from ..scoring.text_policy import TEXT_POLICIES
from .config import (
    SCORING_MODES,
    USER_STREAMS,
    LibriLightConfig,
    load_config_file,
    parse_float_list,
    parse_positions,
    position_key,
)

MODEL_FLAGS = ("hf_repo", "moshi_weights", "lm_config", "mimi_weights", "mimi_config", "tokenizer", "ttt_weights",
               "lora_weights")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moshi_eval.librilight",
        description="Exact long-context audio loss of a Moshi model on LibriLight (one streaming pass, teacher "
                    "forced). `python -m moshi_eval.librilight compare a.json b.json --output cmp.png` overlays runs.",
        argument_default=argparse.SUPPRESS)
    data = parser.add_argument_group("data")
    data.add_argument("--audio-dir", help="LibriLight tree <speaker>/<book>/<chapter>.flac, or a folder of audio files")
    data.add_argument("--audio-files", nargs="+", help="audio files, one sequence each (a .txt file lists paths)")
    data.add_argument("--codes", nargs="+", help="pre-encoded *.safetensors files or folders ('codes' [K, T])")
    data.add_argument("--layout", choices=("auto", "librilight", "files"), help="how to read --audio-dir")
    data.add_argument("--max-chapters", type=int, help="chapters joined per book (default 3)")
    data.add_argument("--num-sequences", type=int, help="evaluate a seeded random subset of this many sequences")
    data.add_argument("--min-snr", type=float, help="skip books with a chapter below this SNR")
    data.add_argument("--min-duration", type=float, help="skip sequences shorter than this many seconds")
    data.add_argument("--exclude-genres", nargs="+", help="skip books with any of these genres")
    data.add_argument("--seed", type=int, help="seed of the selection and of the `sample` text policy")
    data.add_argument("--strict", action="store_true", help="unusable inputs are errors instead of listed skips")
    data.add_argument("--cache-dir", help="codes cache folder (default ~/.cache/moshi_eval/librilight_codes)")
    data.add_argument("--no-cache", dest="use_cache", action="store_false", help="do not read or write the cache")
    model = parser.add_argument_group("model")
    model.add_argument("--hf-repo", help="Hugging Face repo of the checkpoint (e.g. kyutai/moshiko-pytorch-bf16)")
    model.add_argument("--moshi-weights", help="LM weights (local file or hf://repo/file)")
    model.add_argument("--lm-config", help="LM config.json")
    model.add_argument("--mimi-weights", help="Mimi weights")
    model.add_argument("--mimi-config", help="Mimi config JSON")
    model.add_argument("--tokenizer", help="text tokenizer (not used for scoring; avoids a download)")
    model.add_argument("--ttt-weights", help="separate TTT weights file")
    model.add_argument("--lora-weights", help="LoRA weights file")
    model.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    model.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), help="LM dtype (default auto)")
    scoring = parser.add_argument_group("evaluation")
    scoring.add_argument("--batch-size", type=int, help="sequences scored together (default 1)")
    scoring.add_argument("--max-sequence-length", type=int, help="frames scored per sequence at most (default 50000)")
    scoring.add_argument("--text-policy", choices=TEXT_POLICIES,
                         help="text token: model's argmax, sampled, padding, or zero (no text)")
    scoring.add_argument("--mode", choices=SCORING_MODES,
                         help="step: one step_with_logits call per frame (the reference, default); chunked: "
                              "--chunk-size frames per call, same results (greedy by speculation)")
    scoring.add_argument("--chunk-size", type=int, help="frames per call in chunked mode (default 1024)")
    scoring.add_argument("--user-stream", choices=USER_STREAMS, help="user stream: Mimi silence (default) or zero")
    scoring.add_argument("--temp-text", type=float, help="temperature of the `sample` text policy")
    scoring.add_argument("--top-k-text", type=int, help="top-k of the `sample` text policy")
    scoring.add_argument("--codebook-weights", type=parse_float_list, help="e.g. 100,1,1,1,1,1,1,1")
    scoring.add_argument("--first-codebook-weight", type=float, help="weight of codebook 0, others 1 (e.g. 100)")
    scoring.add_argument("--positions", type=parse_positions, help="window ends in frames, e.g. 8k,16k,24k")
    scoring.add_argument("--window", type=int, help="window length in frames (default 1000)")
    scoring.add_argument("--bin-size", type=int, help="frames per point of the curve (default 100)")
    output = parser.add_argument_group("output")
    output.add_argument("--output", help="results JSON (default librilight_results.json)")
    output.add_argument("--plot", help="PNG of the curves")
    output.add_argument("--no-resume", dest="resume", action="store_false", help="recompute finished sequences")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--config", help="eval.yaml with settings (librilight_* keys accepted)")
    parser.add_argument("--demo", action="store_true", help="random-weight demo on synthetic audio (< 1 min on CPU)")
    return parser


def build_compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moshi_eval.librilight compare",
                                     description="Overlay several LibriLight result files in one plot.")
    parser.add_argument("results", nargs="+", help="result JSON files")
    parser.add_argument("--labels", nargs="+", help="one label per file (default: file names)")
    parser.add_argument("--output", required=True, help="PNG to write")
    return parser


def merged_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Config-file values overridden by the flags given on the command line."""
    given = vars(args)
    settings = load_config_file(given["config"]) if "config" in given else {}
    fields = set(LibriLightConfig.__dataclass_fields__)
    settings.update({key: value for key, value in given.items() if key in fields})
    return settings


def print_summary(data: dict[str, Any]) -> None:
    lines = [f"{'metric':<28} value"]
    for position in data["positions"]:
        key = f"librilight_loss_{position_key(position)}"
        value = data[key]
        count = data["windows"][position_key(position)]["num_sequences"]
        lines.append(f"{key:<28} {'null' if value is None else f'{value:.4f}'}  ({count} sequences)")
    slope = data["librilight_slope"]
    lines.append(f"{'librilight_slope':<28} {'null' if slope is None else f'{slope:.4e}'} per frame")
    lines.append(f"{'librilight_samples':<28} {data['librilight_samples']}")
    print("\n".join(lines))


def run_evaluation(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..scoring.distributed import default_device, init_distributed
    from ..scoring.models import load_lm, load_mimi, resolve_dtype
    from ..scoring.scorer import ModelShape
    from .evaluate import evaluate_librilight, resolve_user_stream

    settings = merged_settings(args)
    settings.setdefault("output", "librilight_results.json")
    config = LibriLightConfig(**settings)
    context = init_distributed()
    device = getattr(args, "device", None) or default_device(context)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    dtype = resolve_dtype(getattr(args, "dtype", "auto"), device)
    spec = ModelSpec(**{name: getattr(args, name, None) for name in MODEL_FLAGS})
    lm, info = load_lm(spec, device, dtype)
    needs_mimi = config.codes is None or resolve_user_stream(config.user_stream, ModelShape.of(lm)) == "silence"
    mimi = load_mimi(spec, lm, device, info) if needs_mimi else None
    with torch.no_grad():
        result = evaluate_librilight(lm, mimi, config, model_source=spec.describe(),
                                     progress=not getattr(args, "quiet", False))
    return result.to_dict()


def run_compare(argv: list[str]) -> int:
    from .plot import plot_comparison

    args = build_compare_parser().parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.results):
        raise SystemExit(f"--labels has {len(args.labels)} entries for {len(args.results)} result files")
    labels = args.labels or [Path(path).stem for path in args.results]
    runs = []
    for label, path in zip(labels, args.results):
        try:
            runs.append((label, json.loads(Path(path).read_text())))
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"cannot read result file {path}: {error}") from error
    plot_comparison(runs, args.output)
    print(f"comparison written to {args.output}")
    return 0


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"[librilight] warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        return run_compare(argv[1:])
    args = build_parser().parse_args(argv)
    from ..scoring.distributed import init_distributed, shutdown_distributed

    try:
        if getattr(args, "demo", False):
            from .demo import run_demo

            data = run_demo(merged_settings(args), getattr(args, "device", None), getattr(args, "quiet", False))
        else:
            data = run_evaluation(args)
        if init_distributed().is_main:
            print_summary(data)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()
    return 0

"""`python -m moshi_eval.paper_metrics`: score a checkpoint on sWUGGY, sBLIMP, sStoryCloze and tStoryCloze.

Settings come from the defaults, then `--config` (a YAML file: the `paper_metrics:` section of a training YAML, or a
file of settings), then the flags given on the command line (flags win).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..librilight.config import ConfigError
from ..scoring.models import ModelSpec
from ..scoring.store import store_dir_for
from .config import OTHER_STREAMS, SCORING_MODES, STREAMS, PaperMetricsConfig
from .errors import with_one_line_errors
from .pairs import BENCHMARKS
from .scores import NORMALIZATIONS
from .section import IGNORED_NOTE, read_user_section

MODEL_FLAGS = ("hf_repo", "moshi_weights", "lm_config", "mimi_weights", "mimi_config", "tokenizer", "ttt_weights",
               "lora_weights")
SECTION = "paper_metrics"
DEFAULT_OUTPUT = "paper_metrics_results.json"


def parse_float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"cannot read a comma-separated list of numbers from {text!r}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moshi_eval.paper_metrics",
        description="sWUGGY, sBLIMP, spoken and topic StoryCloze accuracies of a Moshi model: every utterance scored "
                    "as one exact teacher-forced sequence, many utterances per batch.",
        argument_default=argparse.SUPPRESS)
    data = parser.add_argument_group("benchmarks (each runs when its folder is given)")
    data.add_argument("--swuggy-dir", help="sWUGGY split folder (sLM21 lexical/dev or lexical/test)")
    data.add_argument("--swuggy-gold", help="its gold.csv (default <dir>/gold.csv)")
    data.add_argument("--sblimp-dir", help="sBLIMP split folder (sLM21 syntactic/dev or syntactic/test)")
    data.add_argument("--sblimp-gold", help="its gold.csv (default <dir>/gold.csv)")
    data.add_argument("--sstory-dir", help="spoken StoryCloze folder (<n>_<uuid>_correct.wav / _incorrect.wav)")
    data.add_argument("--tstory-dir", help="topic StoryCloze folder (same layout)")
    for bench in BENCHMARKS:
        data.add_argument(f"--{bench}-max-pairs", type=int, help=f"a seeded random subset of {bench} pairs")
    data.add_argument("--seed", type=int, help="seed of the subsets (default 0)")
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
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--stream", choices=STREAMS, help="where the utterance goes: own stream (default) or user")
    scoring.add_argument("--other-stream", choices=OTHER_STREAMS, help="the other audio stream: zero (default) or "
                                                                       "Mimi silence")
    scoring.add_argument("--text-policy", choices=("zero", "pad", "greedy"), help="text stream: zero token (default, "
                                                                                  "no text), padding, or greedy")
    scoring.add_argument("--codebook-weights", type=parse_float_list, help="token weight per codebook, e.g. "
                                                                           "100,1,1,1,1,1,1,1 (default equal)")
    scoring.add_argument("--normalization", choices=NORMALIZATIONS, help="score compared in <bench>_accuracy: mean "
                                                                         "(default) or sum log-probability")
    scoring.add_argument("--mode", choices=SCORING_MODES, help="chunked (default) or step: same numbers")
    scoring.add_argument("--chunk-size", type=int, help="steps per call in chunked mode (default 1024)")
    scoring.add_argument("--batch-size", type=int, help="utterances scored together (default 16)")
    output = parser.add_argument_group("output")
    output.add_argument("--output", help=f"results JSON (default {DEFAULT_OUTPUT})")
    output.add_argument("--zerospeech-submission", help="also write ZeroSpeech 2021 lexical/ and syntactic/ score "
                                                         "files under this folder")
    output.add_argument("--no-resume", dest="resume", action="store_false", help="rescore finished utterances")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--config", help="YAML: a training file's paper_metrics: section, or settings")
    return parser


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML file: its `paper_metrics:` section when it has one, else the whole file."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ValueError(f"cannot read config file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from error
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(raw).__name__}")
    section = raw.get(SECTION, raw)
    if not isinstance(section, Mapping):
        raise ConfigError(f"config file {path}: '{SECTION}' must be a mapping, got {type(section).__name__}")
    user = read_user_section(section, source=str(path))
    for note in notes_for(user.ignored, user.librilight):
        print(f"[paper_metrics] note: {path}: {note}", file=sys.stderr)
    return user.paper_metrics


def notes_for(ignored: list[str], librilight: Mapping[str, Any]) -> list[str]:
    notes = []
    if ignored:
        notes.append(f"ignoring {', '.join(ignored)} ({IGNORED_NOTE})")
    if librilight:
        notes.append(f"LibriLight keys ({', '.join(sorted(librilight))}) are run by python -m moshi_eval.librilight")
    return notes


def merged_settings(args: argparse.Namespace) -> dict[str, Any]:
    given = vars(args)
    settings = load_config_file(given["config"]) if "config" in given else {}
    fields = set(PaperMetricsConfig.__dataclass_fields__)
    settings.update({key: value for key, value in given.items() if key in fields})
    settings.setdefault("output", DEFAULT_OUTPUT)
    return settings


def print_summary(data: dict[str, Any]) -> None:
    lines = [f"{'metric':<28} {'value':>8}  pairs"]
    for bench in BENCHMARKS:
        if f"{bench}_accuracy" in data:
            lines.append(f"{bench + '_accuracy':<28} {data[bench + '_accuracy']:>8.4f}  {data[bench + '_samples']}"
                         f"  (sum {data[bench + '_accuracy_sum']:.4f}, mean {data[bench + '_accuracy_mean']:.4f})")
    lines.append(f"{'paper_metrics_avg':<28} {data['paper_metrics_avg']:>8.4f}")
    print("\n".join(lines))


def run_evaluation(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..scoring.distributed import default_device, init_distributed
    from ..scoring.models import load_lm, load_mimi, resolve_dtype
    from .evaluate import evaluate_paper_metrics

    config = PaperMetricsConfig(**merged_settings(args))
    if not config.benchmarks:
        raise ValueError("no benchmark to run: give at least one of --swuggy-dir, --sblimp-dir, --sstory-dir, "
                         "--tstory-dir (or a --config naming them)")
    context = init_distributed()
    device = getattr(args, "device", None) or default_device(context)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    dtype = resolve_dtype(getattr(args, "dtype", "auto"), device)
    spec = ModelSpec(**{name: getattr(args, name, None) for name in MODEL_FLAGS})
    lm, info = load_lm(spec, device, dtype)
    mimi = load_mimi(spec, lm, device, info)
    return evaluate_paper_metrics(lm, mimi, config, model_source=spec.describe(),
                                  progress=not getattr(args, "quiet", False))


def interruption_note(args: argparse.Namespace) -> str:
    """What an interrupted run leaves behind, and how to go on."""
    given = vars(args)
    if not given.get("resume", True):
        return "nothing was kept (--no-resume); run the command again to start over"
    output = given.get("output", DEFAULT_OUTPUT)
    return (f"finished utterances are kept in {store_dir_for(output)}; run the same command again to resume "
            "from them")


def run_command(args: argparse.Namespace) -> int:
    from ..scoring.distributed import init_distributed, shutdown_distributed

    try:
        data = run_evaluation(args)
        if init_distributed().is_main:
            print_summary(data)
    finally:
        shutdown_distributed()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return with_one_line_errors(lambda: run_command(args), interruption_note(args))

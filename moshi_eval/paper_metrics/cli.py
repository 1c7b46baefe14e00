"""`python -m moshi_eval.paper_metrics`: score a checkpoint on sWUGGY, sBLIMP, sStoryCloze and tStoryCloze.

Settings come from the defaults, then `--config FILE` (a training YAML whose `paper_metrics:` section is read, or a
file of settings), then the flags given on the command line (flags win). Notes about the settings are printed on
stderr, one line each. Paths, model files and the device are checked before anything is loaded; every expected failure
is one `error:` line with exit code 2, and Ctrl-C says how many utterances are kept and how to resume (exit code 130),
through the command-line pieces every evaluation shares (`moshi_eval.scoring`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from moshi.models import model_flags
from moshi.models.model_flags import ModelRequest

from ..scoring.cli import (
    Command,
    Invocation,
    add_codes_cache_arguments,
    check_cache_folder,
    check_input_path,
    check_output_file,
    check_output_folder,
    claim_outputs,
    model_request,
    number_list,
    open_lm,
    setting_label,
)
from ..scoring.errors import ConfigError, print_notes
from ..scoring.run import DistributedContext, init_distributed
from ..scoring.settings import SCORING_MODES, read_settings_section
from .config import GOLD_BENCHMARKS, OTHER_STREAMS, STREAMS, PaperMetricsConfig
from .pairs import BENCHMARKS
from .scores import NORMALIZATIONS
from .section import UserSection, read_user_section

if TYPE_CHECKING:
    from moshi.models.compression import MimiModel
    from moshi.models.lm import LMModel

PROGRAM = "python -m moshi_eval.paper_metrics"
SECTION = "paper_metrics"
DEFAULT_OUTPUT = "paper_metrics_results.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
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
    add_codes_cache_arguments(data)
    model_flags.add_model_flags(parser, model_flags.OURS)
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--stream", choices=STREAMS, help="where the utterance goes: own stream (default) or user")
    scoring.add_argument("--other-stream", choices=OTHER_STREAMS, help="the other audio stream: zero (default) or "
                                                                       "Mimi silence")
    scoring.add_argument("--text-policy", choices=PaperMetricsConfig.text_policies,
                         help="text stream: zero token (default, no text), padding, or greedy")
    scoring.add_argument("--codebook-weights", type=number_list, help="token weight per codebook, e.g. "
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


def read_section(path: str) -> tuple[UserSection, list[str]]:
    """The file's `paper_metrics:` section (the whole file when it has none) sorted out, and the notes on what around
    it was left out."""
    section = read_settings_section(path, SECTION)
    return read_user_section(section.values, section.source), section.notes


def merged_settings(args: argparse.Namespace, section: UserSection | None) -> dict[str, Any]:
    """The section's settings overridden by the flags given on the command line (`output` by default
    `DEFAULT_OUTPUT`)."""
    settings = dict(section.paper_metrics) if section is not None else {}
    fields = set(PaperMetricsConfig.field_names())
    settings.update({key: value for key, value in vars(args).items() if key in fields})
    settings.setdefault("output", DEFAULT_OUTPUT)
    return settings


def check_before_work(config: PaperMetricsConfig, request: ModelRequest, config_file: str | None, given: set[str],
                      benchmark_needed: bool = True) -> None:
    """What can be checked without loading a model or reading audio (ConfigError naming the flag, or the setting and
    the file it came from); no benchmark to run is an error when `benchmark_needed`."""

    def label(name: str) -> str:
        return setting_label(name, None if name in given else config_file)

    if benchmark_needed and not config.benchmarks:
        raise ConfigError("no benchmark to run: give at least one of --swuggy-dir, --sblimp-dir, --sstory-dir, "
                          "--tstory-dir (or a --config naming them)")
    check_output_file(config.output, label("output"))
    claim_outputs(config, label("output"))
    if config.zerospeech_submission:
        check_output_folder(config.zerospeech_submission, label("zerospeech_submission"))
    if config.use_cache and config.cache_dir:
        check_cache_folder(config.cache_dir, label("cache_dir"))
    for bench in config.benchmarks:
        check_input_path(getattr(config, f"{bench}_dir"), label(f"{bench}_dir"), folder=True)
        if bench in GOLD_BENCHMARKS:
            check_input_path(config.gold_file(bench), label(f"{bench}_gold"))
    request.check_files()


def print_summary(data: Mapping[str, Any]) -> None:
    lines = [f"{'metric':<28} {'value':>8}  pairs"]
    for bench in BENCHMARKS:
        if f"{bench}_accuracy" in data:
            lines.append(f"{bench + '_accuracy':<28} {data[bench + '_accuracy']:>8.4f}  {data[bench + '_samples']}"
                         f"  (sum {data[bench + '_accuracy_sum']:.4f}, mean {data[bench + '_accuracy_mean']:.4f})")
    lines.append(f"{'paper_metrics_avg':<28} {data['paper_metrics_avg']:>8.4f}")
    timing = data["timing"]
    resumed = timing.get("resumed_utterances", 0)
    lines.append(f"utterances: {len(data['utterances'])} scored{f' ({resumed} resumed)' if resumed else ''}")
    print("\n".join(lines), flush=True)


def load_models(request: ModelRequest, args: argparse.Namespace, context: DistributedContext
                ) -> tuple[LMModel, MimiModel]:
    """The LM and Mimi the flags name, on the device they choose."""
    resolved, device, lm = open_lm(request, args, context)
    return lm, resolved.load_mimi(device, "encoding the benchmarks' audio")


def evaluate_command(args: argparse.Namespace, invocation: Invocation) -> int:
    section, notes = read_section(args.config) if "config" in vars(args) else (None, [])
    return evaluate_section(args, invocation, section, notes)


def evaluate_section(args: argparse.Namespace, invocation: Invocation, section: UserSection | None,
                     notes: list[str]) -> int:
    """The four benchmarks the flags and the settings file's `section` name (`notes`: what reading the file left
    out)."""
    from . import evaluate

    context = init_distributed()
    if context.is_main:
        print_notes([*notes, *(section.notes(librilight_elsewhere=True) if section is not None else ())])
    config = PaperMetricsConfig(**merged_settings(args, section))
    invocation.config = config
    request = model_request(args, config)
    check_before_work(config, request, getattr(args, "config", None), set(vars(args)))
    lm, mimi = load_models(request, args, context)
    result = evaluate.evaluate_paper_metrics(lm, mimi, config, model_source=request.describe(),
                                             progress=not getattr(args, "quiet", False))
    if context.is_main:
        print_summary(result)
    return 0


COMMAND = Command(PROGRAM, build_parser, evaluate_command, unit="utterance")


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)

"""`python -m moshi_eval.librilight`: evaluate a checkpoint or run the demo.

Settings come from the defaults, then `--config FILE` (an eval.yaml, or a training YAML whose `paper_metrics:` section
is read), then the flags given on the command line (flags win; a data flag such as `--audio-dir` replaces the file's
data source as a whole). Notes about the settings are printed on stderr, one line each. Paths, model files and the
device are checked before anything is loaded; every expected failure is one `error:` line with exit code 2, and Ctrl-C
says where the partial results are and how to resume (exit code 130).
"""

from __future__ import annotations

import argparse
from typing import Any

from moshi.models import model_flags
from moshi.models.model_flags import ModelRequest

from ..scoring.cli import (
    Command,
    Invocation,
    add_codes_cache_arguments,
    check_cache_folder,
    check_input_path,
    check_output_file,
    check_plot_file,
    claim_outputs,
    model_request,
    number_list,
    open_lm,
    setting_label,
)
from ..scoring.errors import print_notes
from ..scoring.run import DistributedContext, init_distributed
from ..scoring.settings import SCORING_MODES, TEXT_POLICIES
from .config import USER_STREAMS, LibriLightConfig, parse_positions, position_key
from .config_keys import DATA_SOURCE_FIELDS, MappedSettings, read_config_file

PROGRAM = "python -m moshi_eval.librilight"
DEFAULT_OUTPUT = "librilight_results.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Exact long-context audio loss of a Moshi model on LibriLight (one streaming pass, teacher "
                    f"forced). `{PROGRAM} compare a.json b.json --output cmp.png` overlays runs (python -m "
                    "moshi_eval.compare compares them).",
        argument_default=argparse.SUPPRESS)
    data = parser.add_argument_group("data")
    data.add_argument("--audio-dir", help="LibriLight tree <speaker>/<book>/<chapter>.flac, or a folder of audio files")
    data.add_argument("--audio-files", nargs="+", help="audio files, one sequence each (a .txt file lists paths)")
    data.add_argument("--codes", nargs="+", help="pre-encoded *.safetensors files or folders ('codes' [K, T])")
    data.add_argument("--layout", choices=("auto", "librilight", "files"), help="how to read --audio-dir")
    data.add_argument("--max-chapters", type=int, help="chapters joined per book (default 3)")
    books = data.add_mutually_exclusive_group()
    books.add_argument("--book", dest="books", action="append", metavar="SPEAKER/BOOK",
                       help="evaluate this book of the tree only (repeatable)")
    books.add_argument("--all-books", dest="books", action="store_const", const=None,
                       help="evaluate every book, whatever book the config file selects")
    data.add_argument("--max-files", type=int, help="only the first N sequences in name order")
    data.add_argument("--num-sequences", type=int, help="evaluate a seeded random subset of this many sequences")
    data.add_argument("--min-snr", type=float, help="skip books with a chapter below this SNR")
    data.add_argument("--min-duration", type=float, help="skip sequences shorter than this many seconds")
    data.add_argument("--exclude-genres", nargs="+", help="skip books with any of these genres")
    data.add_argument("--seed", type=int, help="seed of the selection and of the `sample` text policy")
    data.add_argument("--strict", action="store_true", help="unusable inputs are errors instead of listed skips")
    add_codes_cache_arguments(data)
    model_flags.add_model_flags(parser, model_flags.OURS)
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
    scoring.add_argument("--codebook-weights", type=number_list, help="e.g. 100,1,1,1,1,1,1,1")
    scoring.add_argument("--first-codebook-weight", type=float, help="weight of codebook 0, others 1 (e.g. 100)")
    scoring.add_argument("--positions", type=parse_positions, help="window ends in frames, e.g. 8k,16k,24k")
    scoring.add_argument("--window", type=int, help="window length in frames (default 1000)")
    scoring.add_argument("--bin-size", type=int, help="frames per point of the curve (default 100)")
    scoring.add_argument("--check-every", type=int, help="steps between checks for non-finite losses (default 250)")
    scoring.add_argument("--ttt-inner-losses", action="store_true",
                         help="record each TTT layer's inner loss by position: with W0, before and after the update")
    output = parser.add_argument_group("output")
    output.add_argument("--output", help=f"results JSON (default {DEFAULT_OUTPUT})")
    output.add_argument("--plot", help="image of the curves (.png, .pdf, .svg, ...)")
    output.add_argument("--legacy-keys", action="store_true",
                        help="also write librilight_loss_<frames> keys (librilight_loss_8000, one every 1000 frames) "
                             "for scripts that parse integer suffixes")
    output.add_argument("--no-resume", dest="resume", action="store_false", help="recompute finished sequences")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--config", help="settings file: an eval.yaml, or a training YAML (its paper_metrics section)")
    parser.add_argument("--demo", action="store_true", help="random-weight demo on synthetic audio (< 1 min on CPU)")
    return parser


def merged_settings(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Config-file values overridden by the flags given on the command line, and the notes to print. See
    `settings_from_file` for which values came from the file."""
    given = vars(args)
    mapped = read_config_file(given["config"]) if "config" in given else MappedSettings({})
    settings, notes = dict(mapped.values), list(mapped.notes)
    fields = set(LibriLightConfig.field_names())
    flags = {key: value for key, value in given.items() if key in fields}
    if any(name in flags for name in DATA_SOURCE_FIELDS):
        replaced = [name for name in (*DATA_SOURCE_FIELDS, *sorted(mapped.source_fields)) if name in settings]
        if mapped.source_fields & set(replaced):
            notes.append(f"{given['config']}: the data given on the command line replaces the file's data source "
                         f"and what goes with it ({', '.join(replaced)})")
        for name in replaced:
            del settings[name]
    settings.update(flags)
    return settings, notes


def settings_from_file(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, str]:
    """`{field: config file}` for the settings the command line did not give."""
    given = vars(args)
    if "config" not in given:
        return {}
    return {name: given["config"] for name in settings if name not in given}


def check_before_work(config: LibriLightConfig, request: ModelRequest | None, from_file: dict[str, str]) -> None:
    """Everything that can be checked without loading a model or reading audio (ConfigError naming the flag, or the
    setting and the file it came from)."""

    def label(name: str) -> str:
        return setting_label(name, from_file.get(name))

    check_output_file(config.output, label("output"))
    claim_outputs(config, label("output"))
    if config.plot:
        check_plot_file(config.plot, label("plot"))
    if config.use_cache and config.cache_dir:
        check_cache_folder(config.cache_dir, label("cache_dir"))
    if config.audio_dir:
        check_input_path(config.audio_dir, label("audio_dir"), folder=True)
    for name in ("audio_files", "codes"):
        for entry in getattr(config, name) or ():
            check_input_path(entry, label(name))
    if request is not None:
        request.check_files()


def print_summary(data: dict[str, Any], output: str | None) -> None:
    lines = [f"{'metric':<28} value"]
    for position in data["positions"]:
        key = f"librilight_loss_{position_key(position)}"
        value = data[key]
        count = data["windows"][position_key(position)]["num_sequences"]
        lines.append(f"{key:<28} {'null' if value is None else f'{value:.4f}'}  ({count} sequences)")
    slope = data["librilight_slope"]
    lines.append(f"{'librilight_slope':<28} {'null' if slope is None else f'{slope:.4e}'} per frame")
    lines.append(f"{'librilight_samples':<28} {data['librilight_samples']} frames")
    lines.append(sequences_line(data, output))
    print("\n".join(lines), flush=True)


def sequences_line(data: dict[str, Any], output: str | None) -> str:
    """`sequences: 3 scored (1 resumed), 2 skipped (...)`."""
    resumed = data.get("timing", {}).get("resumed_sequences", 0)
    skipped = len(data["skipped"])
    where = f" (listed under 'skipped' in {output})" if skipped and output else ""
    return (f"sequences: {data['num_sequences']} scored{f' ({resumed} resumed)' if resumed else ''}, "
            f"{skipped} skipped{where}")


def run_evaluation(config: LibriLightConfig, request: ModelRequest, args: argparse.Namespace,
                   context: DistributedContext) -> dict[str, Any]:
    import torch

    from ..scoring.scorer import ModelShape
    from .evaluate import evaluate_librilight, resolve_user_stream

    resolved, device, lm = open_lm(request, args, context)
    needs_mimi = config.codes is None or resolve_user_stream(config.user_stream, ModelShape.of(lm)) == "silence"
    mimi = resolved.load_mimi(device, "audio input and the silence user stream (else: pre-encoded --codes with "
                                      "--user-stream zero)") if needs_mimi else None
    with torch.no_grad():
        result = evaluate_librilight(lm, mimi, config, model_source=request.describe(),
                                     progress=not getattr(args, "quiet", False))
    return result.data


def evaluate_command(args: argparse.Namespace, invocation: Invocation) -> int:
    settings, notes = merged_settings(args)
    context = init_distributed()
    if context.is_main:
        print_notes(notes)
    if getattr(args, "demo", False):
        from .demo import demo_settings, run_demo

        config = LibriLightConfig(**demo_settings(settings))
        invocation.config = config
        check_before_work(config, None, settings_from_file(args, settings))
        device = model_flags.resolve_device(getattr(args, "device", "cpu"), context.local_rank)
        model_flags.select_device(device)
        data = run_demo(config, device, getattr(args, "quiet", False))
    else:
        settings.setdefault("output", DEFAULT_OUTPUT)
        config = LibriLightConfig(**settings)
        invocation.config = config
        request = model_request(args, config)
        check_before_work(config, request, settings_from_file(args, settings))
        data = run_evaluation(config, request, args, context)
    if context.is_main:
        print_summary(data, config.output)
    return 0


COMMAND = Command(PROGRAM, build_parser, evaluate_command, unit="sequence", partial_results=True)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)

"""`python -m moshi_eval.compare`: compare result files of one kind (LibriLight, or paper metrics).

Prints the table, writes the comparison JSON (`--output`) and optionally a figure (`--plot`). Settings that differ
between runs and change the numbers are one `warning:` line on stderr. Bad input (a missing file, a file that is not
results of ours, runs of two kinds, a wrong number of labels) is one `error:` line and exit code 2.

`OVERLAY` is `python -m moshi_eval.librilight compare a.json b.json --output cmp.png`: the LibriLight figure alone.
"""

from __future__ import annotations

import argparse
import sys

from moshi.utils.files import write_json_atomic

from ..scoring.cli import Command, check_output_file, check_plot_file
from ..scoring.errors import print_notes
from .report import check_one_kind, compare_runs, comparison_table
from .runs import LIBRILIGHT, read_runs
from .statistics import Bootstrap

PROGRAM = "python -m moshi_eval.compare"
OVERLAY_PROGRAM = "python -m moshi_eval.librilight compare"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Compare runs of moshi_eval.librilight or moshi_eval.paper_metrics: every metric per run, each "
                    "run's difference to the first with a 95%% bootstrap interval (paired over the sequences or "
                    "pairs both runs scored).")
    parser.add_argument("results", nargs="+", help="result JSON files, the first is the reference")
    parser.add_argument("--labels", nargs="+", help="one label per file (default: the file names)")
    parser.add_argument("--output", required=True, help="comparison JSON to write")
    parser.add_argument("--plot", help="figure to write (.png, .pdf, .svg, ...)")
    parser.add_argument("--resamples", type=int, default=Bootstrap.resamples,
                        help=f"bootstrap resamples (default {Bootstrap.resamples})")
    parser.add_argument("--seed", type=int, default=Bootstrap.seed, help="bootstrap seed (default 0)")
    return parser


def compare_command(args: argparse.Namespace) -> int:
    check_output_file(args.output, "--output")
    if args.plot:
        check_plot_file(args.plot, "--plot")
    runs = read_runs(args.results, args.labels)
    comparison = compare_runs(runs, Bootstrap(args.resamples, args.seed))
    for warning in comparison["warnings"]:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    print(comparison_table(comparison), flush=True)
    write_json_atomic(args.output, comparison)
    print(f"comparison written to {args.output}", flush=True)
    if args.plot:
        from .plot import comparison_figure, save_figure

        save_figure(comparison_figure(comparison, [(run.label, run.data) for run in runs]), args.plot)
        print(f"plot written to {args.plot}", flush=True)
    return 0


def build_overlay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=OVERLAY_PROGRAM,
        description="Overlay the loss curves of LibriLight result files in one plot: the figure of "
                    f"`{PROGRAM} ... --plot`, without the differences and their intervals.")
    parser.add_argument("results", nargs="+", help="result JSON files")
    parser.add_argument("--labels", nargs="+", help="one label per file (default: the file names)")
    parser.add_argument("--output", required=True, help="image to write (.png, .pdf, .svg, ...)")
    return parser


def overlay_command(args: argparse.Namespace) -> int:
    from .plot import librilight_figure, save_figure

    check_plot_file(args.output, "--output")
    runs = read_runs(args.results, args.labels)
    check_one_kind(runs)
    if runs[0].kind != LIBRILIGHT:
        raise ValueError(f"{runs[0].path}: {OVERLAY_PROGRAM} overlays LibriLight results; compare paper-metrics "
                         f"results with {PROGRAM}")
    save_figure(librilight_figure([(run.label, run.data) for run in runs]), args.output)
    print(f"comparison written to {args.output}", flush=True)
    command = f"{PROGRAM} {' '.join(args.results)} --output cmp.json --plot cmp.png"
    print_notes([f"the differences between the runs, with 95% intervals: {command}"])
    return 0


COMMAND = Command(PROGRAM, build_parser, lambda args, _: compare_command(args))
OVERLAY = Command(OVERLAY_PROGRAM, build_overlay_parser, lambda args, _: overlay_command(args))


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)

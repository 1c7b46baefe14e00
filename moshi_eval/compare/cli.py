"""`python -m moshi_eval.compare`: compare result files of one kind (LibriLight, or paper metrics).

Prints the table, writes the comparison JSON (`--output`) and optionally a figure (`--plot`). Settings that differ
between runs and change the numbers are one `warning:` line on stderr. Bad input (a missing file, a file that is not
results of ours, runs of two kinds, a wrong number of labels) is one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from ..scoring.cli_errors import run_command
from ..scoring.files import write_json_atomic
from ..scoring.preflight import check_output_file, check_plot_file
from .report import compare_runs, comparison_table
from .runs import read_runs
from .statistics import Bootstrap

PROGRAM = "python -m moshi_eval.compare"


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: compare_command(args))

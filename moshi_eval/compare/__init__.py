"""Compare evaluation runs: values, differences to the first run, and bootstrap intervals paired over the items both
runs scored.

    from moshi_eval.compare import compare_files
    comparison = compare_files(["baseline.json", "ttt.json"], labels=["baseline", "TTT"])
    comparison["metrics"]["librilight_loss_24k"]["ci95"][1]      # interval of TTT - baseline

Command line: `python -m moshi_eval.compare a.json b.json --labels A B --output cmp.json --plot cmp.png`.
`runs.py` reads result files, `statistics.py` resamples, `report.py` makes the comparison and its table, `plot.py` the
figures. See docs/compare.md.
"""

from .report import compare_files, compare_runs, comparison_table
from .runs import Run, read_run, read_runs
from .statistics import Bootstrap

__all__ = ["Bootstrap", "Run", "compare_files", "compare_runs", "comparison_table", "read_run", "read_runs"]

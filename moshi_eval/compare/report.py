"""The comparison of runs as a JSON-ready dict (`compare_runs`) and a console table (`comparison_table`).

    {"runs": [labels], "files": [paths], "kind": "librilight" | "paper_metrics",
     "metrics": {name: {"values": [per run], "difference": [run - first run], "ci95": [[lo, hi] per run, of the
                        difference; None for the first run], "pairing": [None, "paired" | "unpaired" | ...],
                        "value_ci95": [[lo, hi] per run, of its own value]}},
     "items": {label: {group: number of items}}, "bootstrap": {"resamples", "seed", "confidence", "unit"},
     "warnings": [one line each]}

A metric a run does not have (a window no sequence reached, a benchmark it did not run) is None there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .runs import KIND_NAMES, LIBRILIGHT, Run, read_runs
from .statistics import Bootstrap, Replicates, bootstrap_replicates, centred_interval

UNITS = {LIBRILIGHT: "sequences"}


def check_one_kind(runs: Sequence[Run]) -> None:
    for run in runs[1:]:
        if run.kind != runs[0].kind:
            raise ValueError(f"cannot compare {KIND_NAMES[runs[0].kind]} results ({runs[0].path}) with "
                             f"{KIND_NAMES[run.kind]} results ({run.path}): give runs of one kind")


def metric_names(runs: Sequence[Run]) -> list[str]:
    """Every run's metrics, in the order they first appear."""
    return list(dict.fromkeys(name for run in runs for name in run.metrics))


def differing_settings(runs: Sequence[Run]) -> str | None:
    """One line naming the settings that differ between runs and change the numbers, with each run's value."""
    parts = []
    for key in runs[0].settings:
        values = [run.settings.get(key) for run in runs]
        if any(value != values[0] for value in values):
            parts.append(f"{key} ({', '.join(f'{run.label}: {value}' for run, value in zip(runs, values))})")
    if not parts:
        return None
    return f"the runs differ in settings that change the numbers: {'; '.join(parts)}"


def pairing_label(flags: list[bool]) -> str:
    if all(flags):
        return "paired"
    return "unpaired" if not any(flags) else "partly paired"


def compare_files(paths: Sequence[str | Path], labels: Sequence[str] | None = None,
                  bootstrap: Bootstrap | None = None) -> dict[str, Any]:
    """The comparison of result files (`read_runs`, `compare_runs`)."""
    return compare_runs(read_runs(paths, labels), bootstrap)


def compare_runs(runs: Sequence[Run], bootstrap: Bootstrap | None = None) -> dict[str, Any]:
    """Values, differences to the first run and bootstrap intervals of every metric of the runs (see the module)."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two result files")
    check_one_kind(runs)
    bootstrap = bootstrap or Bootstrap()
    statistics = [{name: metric.statistic for name, metric in run.metrics.items()
                   if metric.statistic is not None and metric.value is not None} for run in runs]
    replicates = bootstrap_replicates([run.items for run in runs], statistics, bootstrap)
    fulls = [{name: statistic.full() for name, statistic in run.items()} for run in statistics]
    metrics = {}
    for name in metric_names(runs):
        values = [run.metrics[name].value if name in run.metrics else None for run in runs]
        entry = {"values": values, "difference": [], "ci95": [], "pairing": [], "value_ci95": []}
        for index, value in enumerate(values):
            own = name in statistics[index] and value is not None
            entry["value_ci95"].append(centred_interval(value, replicates.values[index][name], fulls[index][name],
                                                        bootstrap.confidence) if own else None)
            entry["difference"].append(None if value is None or values[0] is None else value - values[0])
            interval, pairing = difference_interval(name, index, entry["difference"][index], statistics, replicates,
                                                    fulls, bootstrap)
            entry["ci95"].append(interval)
            entry["pairing"].append(pairing)
        metrics[name] = entry
    warnings = [note for run in runs for note in run.notes]
    settings_line = differing_settings(runs)
    if settings_line:
        warnings.insert(0, settings_line)
    return {
        "runs": [run.label for run in runs],
        "files": [run.path for run in runs],
        "kind": runs[0].kind,
        "metrics": metrics,
        "items": {run.label: {group: len(ids) for group, ids in run.items.items()} for run in runs},
        "bootstrap": bootstrap.to_dict() | {"unit": UNITS.get(runs[0].kind, "pairs")},
        "warnings": warnings,
    }


def difference_interval(name: str, index: int, difference: float | None, statistics: list[dict[str, Any]],
                        replicates: Replicates, fulls: list[dict[str, float]],
                        bootstrap: Bootstrap) -> tuple[list[float] | None, str | None]:
    """The interval of run `index`'s difference to the first run, and whether it was paired (None for the first run
    and where either run lacks the metric's per-item data)."""
    if index == 0 or difference is None or name not in statistics[index] or name not in statistics[0]:
        return None, None
    resampled = replicates.values[index][name] - replicates.values[0][name]
    interval = centred_interval(difference, resampled, fulls[index][name] - fulls[0][name], bootstrap.confidence)
    groups = statistics[index][name].sizes()
    return interval, pairing_label([replicates.paired[index][group] for group in groups])


# -- the console table -------------------------------------------------------------------------------------------------


def number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    sign = "+" if signed else ""
    return f"{value:{sign}.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:{sign}.3e}"


def difference_cell(entry: dict[str, Any], index: int) -> str:
    difference, interval = entry["difference"][index], entry["ci95"][index]
    if difference is None:
        return ""
    if interval is None:
        return number(difference, signed=True)
    return f"{number(difference, signed=True)} [{number(interval[0], True)}, {number(interval[1], True)}]"


def comparison_table(comparison: dict[str, Any]) -> str:
    """Each metric's value per run, and each later run's difference to the first with its interval; then how the
    intervals were drawn (the warnings are in `comparison["warnings"]`)."""
    labels = comparison["runs"]
    header = ["metric", labels[0]]
    for label in labels[1:]:
        header += [label, f"{label} - {labels[0]} (95% interval)"]
    rows = [header]
    for name, entry in comparison["metrics"].items():
        row = [name, number(entry["values"][0])]
        for index in range(1, len(labels)):
            row += [number(entry["values"][index]), difference_cell(entry, index)]
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append(interval_note(comparison))
    return "\n".join(lines)


def interval_note(comparison: dict[str, Any]) -> str:
    """How the intervals were drawn and, per run, whether they are paired with the first run."""
    setup = comparison["bootstrap"]
    labels = comparison["runs"]
    pairing = []
    for index, label in enumerate(labels[1:], start=1):
        kinds = {entry["pairing"][index] for entry in comparison["metrics"].values()} - {None}
        pairing.append(f"{label}: {' / '.join(sorted(kinds)) or 'no interval'}")
    return (f"95% intervals: bootstrap over {setup['unit']} ({setup['resamples']} resamples, seed {setup['seed']}), "
            f"paired where both runs scored the same {setup['unit']} ({'; '.join(pairing)})")

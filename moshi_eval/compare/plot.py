"""Figures of a comparison (matplotlib, an optional dependency).

LibriLight: the runs' loss curves overlaid (windows marked, least-squares lines; `moshi_eval.librilight.plot`), and
below them each later run's window-loss differences to the first run with their 95% intervals. Without a comparison
(`comparison=None`) only the overlay is drawn, which is what `python -m moshi_eval.librilight compare` draws.
Paper metrics: each benchmark's accuracy and `paper_metrics_avg` per run with the interval of its value, next to each
later run's difference to the first with its interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..librilight.plot import LEGEND_OUTSIDE, as_floats, draw_overlay, new_figure
from .runs import LIBRILIGHT

DPI = 120


def error_bars(intervals: list[list[float] | None], centres: list[float | None]) -> np.ndarray:
    """`[2, n]` distances below and above each centre (0 where there is no interval)."""
    below, above = [], []
    for interval, centre in zip(intervals, centres):
        if interval is None or centre is None:
            below.append(0.0)
            above.append(0.0)
        else:
            below.append(max(0.0, centre - interval[0]))
            above.append(max(0.0, interval[1] - centre))
    return np.array([below, above])


def librilight_figure(runs: list[tuple[str, dict[str, Any]]], comparison: dict[str, Any] | None = None) -> Any:
    """The curves overlaid; with a comparison, the window-loss differences to the first run below them."""
    if not runs:
        raise ValueError("a comparison figure needs at least one result")
    rows = [1.4] if comparison is None or len(runs) < 2 else [1.4, 0.8]
    figure, axes = new_figure(len(rows), rows)
    draw_overlay(axes[0], runs)
    axes[0].set_title("LibriLight loss against position (markers: window losses at their end positions)", fontsize=10)
    if len(axes) > 1:
        draw_window_differences(axes[1], runs, comparison)
    axes[-1].set_xlabel("frame position")
    return figure


def draw_window_differences(axis: Any, runs: list[tuple[str, dict[str, Any]]], comparison: dict[str, Any]) -> None:
    """Each later run's window-loss difference to the first at the window's end position, with its 95% interval."""
    first = comparison["runs"][0]
    windows = {f"librilight_loss_{key}": window["position"] for _, data in runs for key, window in
               data["windows"].items()}
    spread = 0.006 * axis.get_xlim()[1]
    for index in range(1, len(runs)):
        names = [name for name in windows if name in comparison["metrics"]]
        differences = [comparison["metrics"][name]["difference"][index] for name in names]
        intervals = [comparison["metrics"][name]["ci95"][index] for name in names]
        x = np.array([windows[name] for name in names], dtype=float) + (index - len(runs) / 2) * spread
        axis.errorbar(x, as_floats(differences), yerr=error_bars(intervals, differences), color=f"C{index % 10}",
                      marker="o", markersize=4, capsize=3, linewidth=0.8,
                      label=f"{runs[index][0]} - {first}: window losses")
        draw_mean_difference(axis, comparison["metrics"].get("librilight_mean_loss"), index,
                             f"{runs[index][0]} - {first}: mean over all frames")
    axis.axhline(0.0, color="black", linewidth=0.6)
    axis.set_ylabel(f"loss difference\nto {first} (nats)", fontsize=9)
    axis.legend(fontsize=8, title="95% bootstrap intervals", title_fontsize=8, **LEGEND_OUTSIDE)


def draw_mean_difference(axis: Any, entry: dict[str, Any] | None, index: int, label: str) -> None:
    """Run `index`'s mean-loss difference (over every frame) as a dashed line across, its interval shaded."""
    if entry is None or entry["difference"][index] is None:
        return
    color = f"C{index % 10}"
    axis.axhline(entry["difference"][index], color=color, linestyle="--", linewidth=0.9, label=label)
    if entry["ci95"][index] is not None:
        axis.axhspan(*entry["ci95"][index], color=color, alpha=0.12, linewidth=0)


def headline_accuracies(comparison: dict[str, Any]) -> list[str]:
    """`<bench>_accuracy` of each benchmark and `paper_metrics_avg`, in report order."""
    return [name for name in comparison["metrics"]
            if (name.endswith("_accuracy") or name == "paper_metrics_avg")]


def paper_metrics_figure(comparison: dict[str, Any]) -> Any:
    """Accuracies per run with intervals (left), differences to the first run with intervals (right)."""
    from matplotlib.figure import Figure

    names = headline_accuracies(comparison)
    labels = comparison["runs"]
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    values_axis, differences_axis = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1.0]})
    positions = np.arange(len(names), dtype=float)
    width = 0.7 / len(labels)
    for index, label in enumerate(labels):
        offset = (index - (len(labels) - 1) / 2) * width
        values = [comparison["metrics"][name]["values"][index] for name in names]
        intervals = [comparison["metrics"][name]["value_ci95"][index] for name in names]
        values_axis.errorbar(positions + offset, as_floats(values), yerr=error_bars(intervals, values),
                             color=f"C{index % 10}", marker="o", linestyle="none", capsize=3, label=label)
        if index:
            differences = [comparison["metrics"][name]["difference"][index] for name in names]
            intervals = [comparison["metrics"][name]["ci95"][index] for name in names]
            differences_axis.errorbar(positions + offset, as_floats(differences),
                                      yerr=error_bars(intervals, differences), color=f"C{index % 10}", marker="o",
                                      linestyle="none", capsize=3)
    values_axis.axhline(0.5, color="0.5", linewidth=0.8, linestyle="--", label="chance")
    values_axis.set_ylabel("accuracy")
    values_axis.set_title("accuracy (95% interval of each value)", fontsize=10)
    differences_axis.axhline(0.0, color="black", linewidth=0.6)
    differences_axis.set_ylabel(f"difference to {labels[0]}")
    differences_axis.set_title("difference (95% interval, paired over pairs where possible)", fontsize=10)
    ticks = [name.removesuffix("_accuracy").replace("paper_metrics_avg", "average") for name in names]
    for axis in (values_axis, differences_axis):
        axis.set_xticks(positions, ticks, fontsize=9)
        axis.grid(axis="y", linewidth=0.4, alpha=0.5)
    figure.legend(*values_axis.get_legend_handles_labels(), loc="outside lower center", ncol=len(labels) + 1,
                  fontsize=9, frameon=False)
    return figure


def comparison_figure(comparison: dict[str, Any], runs: list[tuple[str, dict[str, Any]]]) -> Any:
    """The figure for the comparison's kind; `runs` are the labels and result dicts it was made from."""
    if comparison["kind"] == LIBRILIGHT:
        return librilight_figure(runs, comparison)
    return paper_metrics_figure(comparison)


def save_figure(figure: Any, path: str | Path) -> None:
    figure.savefig(path, dpi=DPI)

"""Figures of results (matplotlib, an optional dependency): one run's curve and per-codebook panel, or several runs
overlaid. Both read the dicts written by `LibriLightResult.to_dict()`, so they also work from saved JSON files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def new_figure(rows: int, height_ratios: list[float]) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise RuntimeError("plotting needs matplotlib: pip install matplotlib (part of the 'eval' extra)") from error
    figure = Figure(figsize=(10, 3.2 * sum(height_ratios)), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": height_ratios})[:, 0]
    return figure, list(axes)


def curve_points(data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres (frames) and binned mean losses, NaN bins removed."""
    curve = data["curve"]
    centres = np.asarray(curve["start"], dtype=float) + curve["bin_size"] / 2
    losses = np.asarray([np.nan if v is None else v for v in curve["loss"]], dtype=float)
    keep = np.isfinite(losses)
    return centres[keep], losses[keep]


def add_minutes_axis(axis: Any, frame_rate: float) -> None:
    minutes = axis.secondary_xaxis("top", functions=(lambda f: f / frame_rate / 60.0, lambda m: m * 60.0 * frame_rate))
    minutes.set_xlabel("minutes")


def mark_windows(axis: Any, data: dict[str, Any], color: str | None = None, label_values: bool = True) -> None:
    """Shade each window [P - W, P) and put a marker at its loss."""
    for key, window in data["windows"].items():
        axis.axvline(window["position"], color="grey", linestyle=":", linewidth=0.8)
        if window["loss"] is None:
            continue
        axis.axvspan(window["start"], window["position"], color=color or "tab:orange", alpha=0.12)
        centre = (window["start"] + window["position"]) / 2
        axis.plot([centre], [window["loss"]], marker="o", color=color or "tab:orange")
        if label_values:
            axis.annotate(f"{key}: {window['loss']:.3f}", (centre, window["loss"]), textcoords="offset points",
                          xytext=(4, 6), fontsize=8)


def slope_text(slope: float | None) -> str:
    if slope is None:
        return "slope: n/a"
    return f"slope {slope:+.3e} / frame ({slope * 1000:+.4f} per 1k frames)"


def draw_slope(axis: Any, data: dict[str, Any], x: np.ndarray, y: np.ndarray, color: str) -> None:
    slope = data.get("librilight_slope")
    if slope is None or x.size < 2:
        return
    intercept = float(np.mean(y) - slope * np.mean(x))
    axis.plot(x, intercept + slope * x, linestyle="--", linewidth=1, color=color)


def model_label(data: dict[str, Any]) -> str:
    source = data.get("model", {}).get("source", {})
    for key in ("demo", "hf_repo", "moshi_weights"):
        if source.get(key):
            return "demo model, random weights" if key == "demo" else str(source[key])
    return data.get("model", {}).get("class", "model")


def plot_result(data: dict[str, Any], path: str | Path) -> None:
    """Loss against position (minutes on top), windows marked, slope annotated; per-codebook curves below."""
    figure, (main, codebooks) = new_figure(2, [1.4, 1.0])
    x, y = curve_points(data)
    main.plot(x, y, color="tab:blue", linewidth=1.2, label="mean per-frame loss")
    draw_slope(main, data, x, y, "tab:red")
    mark_windows(main, data)
    if data["flags"]:
        main.axhline(data["uniform_loss"], color="black", linewidth=0.6, linestyle="-.",
                     label="ln(card): uniform guess")
    main.set_ylabel("cross-entropy (nats)")
    main.set_title(f"LibriLight: {model_label(data)} ({data['num_sequences']} sequences, "
                   f"{data['librilight_samples']} frames)\n{slope_text(data.get('librilight_slope'))}", fontsize=10)
    main.legend(fontsize=8, loc="upper right")
    add_minutes_axis(main, data["frame_rate"])
    centres = np.asarray(data["curve"]["start"], dtype=float) + data["curve"]["bin_size"] / 2
    for index, values in enumerate(data["curve"]["codebooks"]):
        series = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        codebooks.plot(centres, series, linewidth=0.9, label=f"codebook {index}")
    codebooks.set_xlabel("frame position (12.5 frames per second)" if data["frame_rate"] == 12.5 else "frame position")
    codebooks.set_ylabel("per-codebook loss")
    codebooks.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.savefig(path, dpi=120)


def plot_comparison(runs: list[tuple[str, dict[str, Any]]], path: str | Path) -> None:
    """Several results overlaid in one plot, each with its windows and slope."""
    if not runs:
        raise ValueError("compare needs at least one result file")
    figure, (axis,) = new_figure(1, [1.4])
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for (label, data), color in zip(runs, colors):
        x, y = curve_points(data)
        axis.plot(x, y, color=color, linewidth=1.2, label=f"{label}: {slope_text(data.get('librilight_slope'))}")
        draw_slope(axis, data, x, y, color)
        mark_windows(axis, data, color=color, label_values=False)
    axis.set_xlabel("frame position")
    axis.set_ylabel("cross-entropy (nats)")
    axis.set_title("LibriLight loss against position")
    axis.legend(fontsize=8)
    add_minutes_axis(axis, runs[0][1]["frame_rate"])
    figure.savefig(path, dpi=120)

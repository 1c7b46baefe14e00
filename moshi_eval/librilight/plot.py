"""Figures of results (matplotlib, an optional dependency): one run's curve and per-codebook panel, and the curves of
several runs overlaid on one axis (`draw_overlay`, drawn by `moshi_eval.compare`). Both read the dicts written by
`LibriLightResult.to_dict()`, so they also work from saved JSON files.

The x axis spans the frames that were scored; each window is shaded over the frames it averages and marked at its end
position, the position its label names (`8k` at frame 8000); the least-squares line is in the legend with its slope;
legends sit outside the data, to the right of the axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import position_key

LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}


def new_figure(rows: int, height_ratios: list[float]) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise RuntimeError("plotting needs matplotlib: pip install matplotlib (part of the 'eval' extra)") from error
    figure = Figure(figsize=(11, 3.2 * sum(height_ratios)), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": height_ratios})[:, 0]
    return figure, list(axes)


def scored_frames(data: dict[str, Any]) -> int:
    """Frames of the longest scored sequence (the extent of the curve)."""
    lengths = [sequence["num_frames"] for sequence in data.get("sequences", [])]
    if lengths:
        return max(lengths)
    curve = data["curve"]
    return (curve["start"][-1] + curve["bin_size"]) if curve["start"] else 0


def bin_centres(data: dict[str, Any]) -> np.ndarray:
    """The middle frame of each bin of the curve (the last bin may be cut short by the end of the data)."""
    curve = data["curve"]
    starts = np.asarray(curve["start"], dtype=float)
    ends = np.minimum(starts + curve["bin_size"], scored_frames(data))
    return (starts + ends) / 2


def as_floats(values: list[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def curve_points(data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres (frames) and binned mean losses, NaN bins removed."""
    losses = as_floats(data["curve"]["loss"])
    keep = np.isfinite(losses)
    return bin_centres(data)[keep], losses[keep]


def add_minutes_axis(axis: Any, frame_rate: float) -> None:
    minutes = axis.secondary_xaxis("top", functions=(lambda f: f / frame_rate / 60.0, lambda m: m * 60.0 * frame_rate))
    minutes.set_xlabel("minutes")


def mark_windows(axis: Any, data: dict[str, Any], color: str | None = None, label: str | None = "window loss",
                 label_values: bool = True) -> None:
    """Shade each window [P - W, P) that has a loss and put a marker at P, where its label says it ends."""
    color = color or "tab:orange"
    for key, window in data["windows"].items():
        if window["loss"] is None:
            continue
        axis.axvspan(window["start"], window["position"], color=color, alpha=0.12, linewidth=0)
        axis.plot([window["position"]], [window["loss"]], marker="o", linestyle="none", color=color, label=label)
        label = None
        if label_values:
            axis.annotate(f"{key}: {window['loss']:.3f}", (window["position"], window["loss"]),
                          textcoords="offset points", xytext=(-4, 6), ha="right", fontsize=8)


def slope_text(slope: float | None) -> str:
    if slope is None:
        return "slope: n/a"
    return f"slope {slope:+.3e} / frame ({slope * 1000:+.4f} per 1k frames)"


def per_1k_frames(slope: float | None) -> str:
    return "slope n/a" if slope is None else f"slope {slope * 1000:+.4f} per 1k frames"


def draw_slope(axis: Any, data: dict[str, Any], x: np.ndarray, y: np.ndarray, color: str, label: str) -> None:
    slope = data.get("librilight_slope")
    if slope is None or x.size < 2:
        return
    intercept = float(np.mean(y) - slope * np.mean(x))
    axis.plot(x, intercept + slope * x, linestyle="--", linewidth=1, color=color, label=label)


def model_label(data: dict[str, Any]) -> str:
    source = data.get("model", {}).get("source", {})
    for key in ("demo", "hf_repo", "moshi_weights"):
        if source.get(key):
            return "demo model, random weights" if key == "demo" else str(source[key])
    return data.get("model", {}).get("class", "model")


def worse_than_uniform(data: dict[str, Any]) -> bool:
    """Whether a window loss is above ln(card) (the figure then draws that line)."""
    losses = (data[f"librilight_loss_{position_key(position)}"] for position in data["positions"])
    return any(loss is not None and loss > data["uniform_loss"] for loss in losses)


def draw_inner_losses(axis: Any, layer: str, losses: dict[str, list[float | None]], bin_size: int) -> None:
    """One TTT layer's inner losses by position bin: with W0, before and after the mini-batch's update."""
    x = np.asarray(losses["position"], dtype=float) + bin_size / 2
    styles = {"w0": ("W0 (initial weights)", "0.45", "--"), "before": ("before the update", "tab:blue", "-"),
              "after": ("after the update", "tab:green", "-")}
    for kind, (label, color, linestyle) in styles.items():
        axis.plot(x, as_floats(losses[kind]), color=color, linestyle=linestyle, linewidth=1.1, label=label)
    axis.set_ylabel(f"layer {layer}\ninner loss", fontsize=9)
    axis.legend(fontsize=7, **LEGEND_OUTSIDE)


def result_figure(data: dict[str, Any]) -> Any:
    """Loss against position (minutes on top), windows marked, least-squares line; per-codebook curves below, then
    one panel per TTT layer with its inner losses when the results have them."""
    inner = data.get("ttt_inner_losses") or {}
    figure, (main, codebooks, *layers) = new_figure(2 + len(inner), [1.4, 1.0] + [0.7] * len(inner))
    x, y = curve_points(data)
    main.plot(x, y, color="tab:blue", linewidth=1.2, label=f"mean per-frame loss ({data['curve']['bin_size']}-frame "
                                                           "bins)")
    draw_slope(main, data, x, y, "tab:red", f"least-squares fit: {slope_text(data.get('librilight_slope'))}")
    mark_windows(main, data, label=f"window loss (mean of the {data['window']} frames before the marker)")
    if worse_than_uniform(data):
        main.axhline(data["uniform_loss"], color="black", linewidth=0.6, linestyle="-.",
                     label="ln(card): uniform guess")
    main.set_ylabel("cross-entropy (nats)")
    main.set_title(f"LibriLight: {model_label(data)} ({data['num_sequences']} sequences, "
                   f"{data['librilight_samples']} frames)\n{slope_text(data.get('librilight_slope'))}", fontsize=10)
    main.legend(fontsize=8, **LEGEND_OUTSIDE)
    main.set_xlim(0, max(scored_frames(data), 1))
    add_minutes_axis(main, data["frame_rate"])
    for index, values in enumerate(data["curve"]["codebooks"]):
        codebooks.plot(bin_centres(data), as_floats(values), linewidth=0.9, label=f"codebook {index}")
    codebooks.set_ylabel("per-codebook loss")
    if data["curve"]["codebooks"]:
        codebooks.legend(fontsize=7, **LEGEND_OUTSIDE)
    for axis, (layer, losses) in zip(layers, sorted(inner.items(), key=lambda item: int(item[0]))):
        draw_inner_losses(axis, layer, losses, data["curve"]["bin_size"])
    if layers:
        layers[0].set_title("TTT inner loss l(W; k_t, v_t) by position, mean over heads and sequences", fontsize=9)
    (layers or [codebooks])[-1].set_xlabel(
        "frame position (12.5 frames per second)" if data["frame_rate"] == 12.5 else "frame position")
    return figure


def draw_overlay(axis: Any, runs: list[tuple[str, dict[str, Any]]]) -> None:
    """Several results' curves on one axis, each with its windows and least-squares line (minutes on top)."""
    for index, (label, data) in enumerate(runs):
        color = f"C{index % 10}"
        x, y = curve_points(data)
        axis.plot(x, y, color=color, linewidth=1.2, label=label)
        fit = f"{label}: least-squares fit, {per_1k_frames(data.get('librilight_slope'))}"
        draw_slope(axis, data, x, y, color, fit)
        mark_windows(axis, data, color=color, label=None, label_values=False)
    axis.set_ylabel("cross-entropy (nats)")
    axis.legend(fontsize=8, **LEGEND_OUTSIDE)
    axis.set_xlim(0, max(max(scored_frames(data) for _, data in runs), 1))
    add_minutes_axis(axis, runs[0][1]["frame_rate"])


def plot_result(data: dict[str, Any], path: str | Path) -> None:
    result_figure(data).savefig(path, dpi=120)

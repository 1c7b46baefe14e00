"""The figures: legend outside the data, x axis fitted to the scored frames, window markers at the end position their
label names, the least-squares line in the legend."""

from __future__ import annotations

import numpy as np
import pytest
from test_metrics import synthetic_sequences

from moshi_eval.compare.plot import librilight_figure
from moshi_eval.librilight.plot import plot_result, result_figure
from moshi_eval.librilight.results import LibriLightResult


@pytest.fixture(scope="module")
def data():
    sequences = synthetic_sequences([1700, 1100])
    return LibriLightResult(sequences, card=2048, frame_rate=12.5, positions=[500, 1000, 1500, 8000],
                            window=200, bin_size=50).to_dict()


def drawn(figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def test_result_figure_layout(data, tmp_path):
    figure = result_figure(data)
    renderer = drawn(figure)
    main, codebooks = figure.axes[:2]
    assert main.get_xlim() == (0.0, 1700.0) and codebooks.get_xlim() == (0.0, 1700.0)
    for axis in (main, codebooks):
        legend = axis.get_legend()
        assert legend.get_window_extent(renderer).x0 >= axis.get_window_extent(renderer).x1
    markers = [line for line in main.get_lines() if line.get_marker() == "o"]
    assert [float(line.get_xdata()[0]) for line in markers] == [500.0, 1000.0, 1500.0]
    assert [float(line.get_ydata()[0]) for line in markers] == [data["windows"][key]["loss"]
                                                              for key in ("500", "1k", "1500")]
    labels = [text.get_text() for text in main.get_legend().get_texts()]
    assert any(label.startswith("least-squares fit: slope") for label in labels)
    assert sum(label.startswith("window loss") for label in labels) == 1
    fit = next(line for line in main.get_lines() if line.get_label().startswith("least-squares"))
    x, y = fit.get_xdata(), fit.get_ydata()
    assert (y[-1] - y[0]) / (x[-1] - x[0]) == pytest.approx(data["librilight_slope"])
    annotations = {text.get_text().split(":")[0]: text.xy[0] for text in main.texts}
    assert annotations == {"500": 500, "1k": 1000, "1500": 1500}
    plot_result(data, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_comparison_figure_layout(data):
    other = LibriLightResult(synthetic_sequences([2300], seed=3), card=2048, frame_rate=12.5, positions=[1000],
                             window=200).to_dict()
    figure = librilight_figure([("a", data), ("b", other)])
    renderer = drawn(figure)
    axis = figure.axes[0]
    assert axis.get_xlim() == (0.0, 2300.0)
    assert axis.get_legend().get_window_extent(renderer).x0 >= axis.get_window_extent(renderer).x1
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert labels[:2] == ["a", "a: least-squares fit, " + labels[1].split(", ", 1)[1]]
    assert any(label.startswith("b: least-squares fit") for label in labels)
    curve_x = np.concatenate([line.get_xdata() for line in axis.get_lines() if line.get_label() in ("a", "b")])
    assert curve_x.min() > 0 and curve_x.max() <= 2300


def test_a_panel_per_ttt_layer_with_its_inner_losses(data):
    inner = {str(layer): {"position": [0, 50, 100], "w0": [3.0, 3.1, 3.0], "before": [3.0, 2.5, 2.2],
                          "after": [2.6, 2.3, None], "count": [100, 100, 40]} for layer in (7, 3)}
    figure = result_figure(data | {"ttt_inner_losses": inner})
    drawn(figure)
    panels = figure.axes[2:]
    assert [axis.get_ylabel() for axis in panels] == ["layer 3\ninner loss", "layer 7\ninner loss"]
    for axis in panels:
        assert axis.get_xlim() == (0.0, 1700.0)
        lines = {line.get_label(): line for line in axis.get_lines()}
        assert list(lines) == ["W0 (initial weights)", "before the update", "after the update"]
        assert list(lines["before the update"].get_xdata()) == [25.0, 75.0, 125.0]
        assert list(lines["before the update"].get_ydata()) == inner["3"]["before"]
        assert np.isnan(lines["after the update"].get_ydata()[-1])
    assert panels[1].get_xlabel().startswith("frame position") and figure.axes[1].get_xlabel() == ""

"""Figures from results (numbers in, ``go.Figure`` out)."""

from __future__ import annotations

import pytest

from explorer.plots import calibration_figure


def test_calibration_figure_plots_each_bin_against_the_diagonal():
    bins = [
        {"bin": "0.0-0.1", "mean P(affirmed)": 0.05, "share positive": 0.2, "cases": 4},
        {"bin": "0.5-0.6", "mean P(affirmed)": 0.55, "share positive": 0.5, "cases": 16},
    ]
    fig = calibration_figure(bins, "tiny")
    diagonal, model = fig.data
    assert list(diagonal.x) == [0, 1] and list(diagonal.y) == [0, 1]
    assert model.name == "tiny" and list(model.x) == [0.05, 0.55] and list(model.y) == [0.2, 0.5]
    small, big = model.marker.size  # marker area grows with the bin's case count
    assert big == pytest.approx(20.0) and small == pytest.approx(13.0)
    assert list(model.text) == ["4 cases", "16 cases"] and "tiny" in fig.layout.title.text

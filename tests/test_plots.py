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


def test_maps_carry_their_colour_scale():
    import numpy as np

    from explorer.plots import overlay, with_colour_bar

    film = np.full((64, 80), 0.5, np.float32)
    att = np.zeros((64, 80), np.float32)
    att[10:20, 10:20], att[40:50, 50:60] = 1.0, -1.0
    shown = with_colour_bar(overlay(film, att, 0.6, signed=True), signed=True)
    assert shown.shape == (64 + 26, 80, 3) and shown.dtype == np.uint8
    bar = shown[64:70].astype(int)  # the colour ramp, under the map
    assert (bar[:, 0, 2] > bar[:, 0, 0] + 100).all()  # left end blue: against the prompt
    assert (bar[:, -1, 0] > bar[:, -1, 2] + 100).all()  # right end red: for it
    plain = with_colour_bar(overlay(film, np.abs(att), 0.6, signed=False), signed=False)
    assert abs(int(plain[66, 0, 0]) - int(plain[66, 0, 2])) < 5  # unsigned: starts grey


def test_disagreement_colours_name_the_reference():
    """The legend says whom the labeler disagrees with (for IU: the MeSH terms)."""
    from types import SimpleNamespace

    import numpy as np

    from explorer.plots import map_categories

    nan = np.nan
    labels = np.array([[1, nan], [1, nan], [nan, nan], [1, nan]], dtype=np.float32)
    reference = np.array([[1, nan], [nan, nan], [nan, 1], [nan, 1]], dtype=np.float32)
    iu = SimpleNamespace(labels=labels, reference=reference, reference_source="IU MeSH terms")
    names, cat = map_categories(iu, "disagreement")
    assert names == [
        "labeler agrees with IU MeSH terms",
        "labeler only (not in IU MeSH terms)",
        "IU MeSH terms only (labeler missed)",
        "both ways",
    ]
    assert cat.tolist() == [0, 1, 2, 3]

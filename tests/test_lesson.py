"""The lesson's step texts are computed from their own figures."""

from __future__ import annotations

import re

import pytest

from explorer.lesson import _lesson_phantom, _step_models
from explorer.models import ModelRegistry
from explorer.models.tiny import build_tiny_specs


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    specs = build_tiny_specs(tmp_path_factory.mktemp("tiny"))
    reg = ModelRegistry(specs, default=specs[0].name)
    return [reg.load(s.name, "cpu") for s in specs[:2]]


def test_step_two_says_what_its_figure_shows(two_models):
    phantom = _lesson_phantom()
    step = _step_models(two_models, phantom)
    truth = phantom.labels()
    present = [f for f, v in truth.items() if v == 1]
    absent = [f for f, v in truth.items() if v == 0]
    assert f"whose labels are {', '.join(present)}" in step.text
    verdicts = {}
    for bar in step.figure.data:
        says = {f: p >= 0.5 for f, p in zip(bar.y, bar.x, strict=True)}
        verdicts[bar.name] = says
        found = sum(says[f] for f in present)
        wrong = sum(says[f] for f in absent)
        expected = f"**{bar.name}** affirms {found}/{len(present)} of the findings the image has"
        assert expected in step.text
        assert re.search(
            rf"{bar.name}\*\* affirms .*? and {wrong}/{len(absent)} of those", step.text
        )
    a, b = verdicts.values()
    differ = [f for f in truth if a[f] != b[f]]
    if differ:
        assert f"The two models disagree on {', '.join(differ)}." in step.text
    else:
        assert "same verdict on every finding" in step.text

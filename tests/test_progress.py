"""The progress vocabulary: stages as one bar, durations in words."""

from __future__ import annotations

import pytest

from explorer.progress import in_words, staged


def test_stages_share_one_bar_by_their_weights():
    seen = []
    stage = staged(lambda f, m: seen.append((round(f, 3), m)), {"a": 1.0, "b": 3.0})
    stage("a")(0.0, "a")
    stage("a")(1.0, "a")
    stage("b")(0.5, "b")
    stage("b")(2.0, "b")  # clipped to the stage's end
    stage("unknown")(0.3, "c")  # a stage nobody weighed takes no room
    assert seen == [(0.0, "a"), (0.25, "a"), (0.625, "b"), (1.0, "b"), (1.0, "c")]
    seen.clear()
    stage = staged(lambda f, m: seen.append((round(f, 3), m)), {"a": 1.0, "b": 1.0})
    stage("a")(0.5, "a")
    stage("between")(1.0, "between")
    stage("b")(0.0, "b")
    assert seen == [(0.25, "a"), (0.25, "between"), (0.5, "b")]
    staged(None, {"a": 1})("a")(0.5, "silent")  # no callback: nothing happens


@pytest.mark.parametrize(
    ("seconds", "words"), [(0.2, "1 s"), (40.4, "40 s"), (89, "89 s"), (155, "3 min")]
)
def test_durations_in_words(seconds, words):
    assert in_words(seconds) == words

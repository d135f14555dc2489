"""The progress-callback type every long-running library call accepts, and how work stops.

``progress(fraction, message)``: ``fraction`` in [0, 1] of the call's work done so far and a
short message saying what it is doing. The UI adapts it to ``gr.Progress``, the CLI to a tqdm bar.

A callback may raise :class:`Cancelled` to stop the work (the app does when the person's page
has gone): long library calls report progress between steps, so they stop at the next one.
Work that keeps partial results (a report map's embedded chunks) stays resumable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from explorer.errors import ExplorerError

#: ``callable(fraction, message)``, called as work advances.
Progress = Callable[[float, str], None]


def in_words(seconds: float) -> str:
    """A duration as a person reads it: ``"40 s"``, ``"3 min"``."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{seconds / 60:.0f} min"


class Cancelled(ExplorerError):
    """The work was stopped before it finished because nobody is waiting for its result."""


def staged(progress: Progress | None, weights: Mapping[str, float]) -> Callable[[str], Progress]:
    """Report stages of one piece of work as one bar.

    Args:
        progress: The caller's callback (None: silent).
        weights: Each stage's expected share of the work (any positive scale, e.g. seconds),
            in the order the stages run.

    Returns:
        ``stage(name)`` -> a callback for that stage whose own ``[0, 1]`` is mapped onto the
        stage's slice of the whole; a stage not named in ``weights`` takes no room (it reports
        where the bar already is).
    """
    total = sum(max(0.0, w) for w in weights.values()) or 1.0
    # Raw (start, weight) per stage; positions are (start + weight * fraction) / total, so a
    # stage's end and the next stage's start are the same float and the bar never steps back.
    slices, at = {}, 0.0
    for name, w in weights.items():
        slices[name] = (at, max(0.0, w))
        at += max(0.0, w)
    last = [0.0]

    def stage(name: str) -> Progress:
        def report(fraction: float, message: str) -> None:
            if name in slices:
                start, weight = slices[name]
                last[0] = min(1.0, (start + weight * min(max(fraction, 0.0), 1.0)) / total)
            if progress is not None:
                progress(last[0], message)

        return report

    return stage

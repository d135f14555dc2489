"""Plotly figures from results (results in, ``go.Figure`` out; no computation here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from explorer.scoring import FindingsResult

AFFIRMED_COLOUR = "#c0392b"
NEGATED_COLOUR = "#2471a3"
BLIND_COLOUR = "#7f8c8d"


def findings_figure(result: FindingsResult, sort: bool = True) -> go.Figure:
    """Diverging bars of P(affirmed) - 0.5 per finding; negation-blind rows in grey.

    Bars to the right: the model prefers "there is X"; to the left: "no X". Hover shows both
    similarities, the pair probability and the prompts.
    """
    scores = sorted(result.scores, key=lambda s: s.prob_affirmed) if sort else list(result.scores)
    colours = [
        BLIND_COLOUR
        if s.negation_blind
        else AFFIRMED_COLOUR
        if s.prob_affirmed >= 0.5
        else NEGATED_COLOUR
        for s in scores
    ]
    labels = [f"{s.finding} ⚠" if s.negation_blind else s.finding for s in scores]
    hover = [
        (
            f"<b>{s.finding}</b><br>P(affirmed) = {s.prob_affirmed:.3f}<br>"
            f"sim affirmed = {s.sim_affirmed:.4f}<br>sim negated = {s.sim_negated:.4f}<br>"
            f"text cosine (affirmed vs negated) = {s.text_cosine:.3f}<br>"
            f"e.g. “{s.affirmed[0]}” vs “{s.negated[0]}”"
            + ("<br><i>negation-blind here</i>" if s.negation_blind else "")
        )
        for s in scores
    ]
    fig = go.Figure(
        go.Bar(
            x=[s.prob_affirmed - 0.5 for s in scores],
            y=labels,
            base=0.5,
            orientation="h",
            marker_color=colours,
            hovertext=hover,
            hoverinfo="text",
        )
    )
    fig.add_vline(x=0.5, line_color="black", line_width=1)
    fig.update_layout(
        title=f"{result.model}: affirmed vs negated (softmax over each pair)",
        xaxis={
            "title": "← prefers “no X”      P(affirmed)      prefers “there is X” →",
            "range": [0, 1],
        },
        yaxis={"automargin": True},
        height=max(320, 26 * len(scores) + 120),
        margin={"l": 10, "r": 10, "t": 50, "b": 50},
        showlegend=False,
    )
    return fig


def overlay(
    pixels: np.ndarray, attribution: np.ndarray, opacity: float = 0.5, signed: bool = True
) -> np.ndarray:
    """Blend a saliency map over a grayscale image -> RGB uint8 ``[H, W, 3]``.

    Signed maps use red for evidence *for* the prompt and blue for evidence *against* it,
    scaled by the largest absolute value; unsigned maps use red only. ``opacity`` scales the
    colour's weight where the map is strongest.
    """
    gray = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    att = np.nan_to_num(np.asarray(attribution, dtype=np.float32))
    peak = float(np.abs(att).max()) or 1.0
    a = att / peak
    pos, neg = np.clip(a, 0, 1), (np.clip(-a, 0, 1) if signed else np.zeros_like(a))
    colour = np.stack([pos, np.zeros_like(a), neg], axis=-1)
    weight = (opacity * np.maximum(pos, neg))[..., None]
    rgb = (1.0 - weight) * gray[..., None] + weight * colour
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def mask_outline(
    rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 255, 0)
) -> np.ndarray:
    """Draw the outline of a boolean mask onto an RGB image (returns a copy)."""
    from scipy.ndimage import binary_erosion

    edge = mask & ~binary_erosion(mask)
    out = rgb.copy()
    out[edge] = colour
    return out


def token_highlights(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, float]]:
    """(token, score scaled to [-1, 1]) pairs for a highlighted-text view."""
    peak = max((abs(s) for s in scores), default=0.0) or 1.0
    return [(t, float(s) / peak) for t, s in zip(tokens, scores, strict=True)]

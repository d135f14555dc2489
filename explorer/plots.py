"""Plotly figures from results (results in, ``go.Figure`` out; no computation here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from explorer.scoring import FindingsResult

AFFIRMED_COLOUR = "#c0392b"
NEGATED_COLOUR = "#2471a3"
BLIND_COLOUR = "#7f8c8d"


def findings_order(result: FindingsResult) -> list[str]:
    """The findings of ``result`` from least to most affirmed (the chart's rows, bottom up)."""
    return [s.finding for s in sorted(result.scores, key=lambda s: s.prob_affirmed)]


def findings_figure(
    result: FindingsResult, sort: bool = True, order: Sequence[str] | None = None
) -> go.Figure:
    """Diverging bars of P(affirmed) - 0.5 per finding; negation-blind rows in grey.

    Bars to the right: the model prefers "there is X"; to the left: "no X". Hover shows both
    similarities, the pair probability and the prompts. ``order`` puts the rows in another
    result's order (:func:`findings_order`), so two models' charts read across row by row.
    """
    if order is not None:
        rank = {f: k for k, f in enumerate(order)}
        scores = sorted(result.scores, key=lambda s: rank.get(s.finding, len(rank)))
    elif sort:
        scores = sorted(result.scores, key=lambda s: s.prob_affirmed)
    else:
        scores = list(result.scores)
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


def with_colour_bar(rgb: np.ndarray, signed: bool = True, height: int = 26) -> np.ndarray:
    """``rgb`` (an :func:`overlay`) with its colour scale drawn underneath, labelled in words.

    Signed maps: blue (against the prompt) through the film's grey to red (for it), scaled to
    the map's largest absolute value; unsigned maps: grey to red (none to the most).
    """
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    t = np.linspace(-1.0 if signed else 0.0, 1.0, w, dtype=np.float32)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    grey = 0.5 * (1.0 - np.maximum(pos, neg))
    ramp = np.stack([grey + pos, grey, grey + neg], axis=-1)
    bar = np.repeat((np.clip(ramp, 0, 1) * 255).astype(np.uint8)[None], height // 2, axis=0)
    strip = Image.new("RGB", (w, height), (255, 255, 255))
    strip.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(strip)
    left, right = ("against", "for the prompt") if signed else ("none", "most")
    draw.text((2, height // 2), left, fill=(0, 0, 160))
    draw.text((max(2, w - 6 * len(right) - 2), height // 2), right, fill=(160, 0, 0))
    return np.concatenate([rgb, np.asarray(strip)], axis=0)


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


# --- report map -------------------------------------------------------------------------------

#: Colours by cluster / status (colour-blind-safe Okabe-Ito order, then greys).
CATEGORY_COLOURS = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
    "#999999",
    "#6b4c9a",
    "#8c564b",
    "#17becf",
)


def map_categories(report_map, colour_by: str) -> tuple[list[str], np.ndarray]:
    """Category names and one category index per report for a map colouring.

    ``colour_by`` is ``"cluster"``, a CheXpert finding name (its status in each report), or
    ``"disagreement"`` (labeler positives vs the reference labels, e.g. IU MeSH).
    """
    from explorer.vocab.labels import CHEXPERT_FINDINGS, LABEL_NAMES

    if colour_by == "cluster":
        return [c.name for c in report_map.clusters], np.asarray(report_map.assignment)
    if colour_by == "disagreement":
        if report_map.reference is None:
            raise ValueError("this corpus has no reference labels to disagree with")
        lab = report_map.labels == 1
        ref = report_map.reference == 1
        extra = (lab & ~ref).any(axis=1)
        missed = (ref & ~lab).any(axis=1)
        cat = np.where(extra & missed, 3, np.where(missed, 2, np.where(extra, 1, 0)))
        source = report_map.reference_source or "the reference labels"
        names = [f"labeler agrees with {source}", f"labeler only (not in {source})"]
        return [*names, f"{source} only (labeler missed)", "both ways"], cat
    j = CHEXPERT_FINDINGS.index(colour_by)
    col = report_map.labels[:, j]
    cat = np.full(len(col), 3)
    for k, code in enumerate(LABEL_NAMES):
        cat[col == code] = k
    return [*LABEL_NAMES.values(), "not mentioned"], cat


def _hover(report_map, idx: np.ndarray, width: int) -> list[str]:
    from explorer.vocab.labels import CHEXPERT_FINDINGS

    out = []
    for i in idx:
        text = report_map.texts[i] if width else ""
        text = text if len(text) <= width else text[: width - 1] + "…"
        pos = [f for f, v in zip(CHEXPERT_FINDINGS, report_map.labels[i], strict=True) if v == 1]
        unc = [f for f, v in zip(CHEXPERT_FINDINGS, report_map.labels[i], strict=True) if v == -1]
        wrapped = "<br>".join(text[s : s + 60] for s in range(0, len(text), 60))
        out.append(
            f"<b>{report_map.ids[i]}</b> · {report_map.clusters[report_map.assignment[i]].name}"
            f"<br>positive: {', '.join(pos) or '-'}"
            + (f"<br>uncertain: {', '.join(unc)}" if unc else "")
            + (f"<br>{wrapped}" if wrapped else "")
        )
    return out


def map_figure(
    report_map,
    colour_by: str = "cluster",
    image_xy: tuple[float, float] | None = None,
    neighbour_idx: Sequence[int] = (),
    title: str | None = None,
    hover_chars: int = 220,
) -> go.Figure:
    """WebGL scatter of the map, one trace per category, optional image marker and neighbours.

    Every report point carries its row index as ``customdata`` so a browser selection maps back
    to reports. ``hover_chars`` of report text appear on hover (0: labels only, for big maps).
    """
    names, cat = map_categories(report_map, colour_by)
    fig = go.Figure()
    for k, name in enumerate(names):
        idx = np.flatnonzero(cat == k)
        if idx.size == 0:
            continue
        fig.add_trace(
            go.Scattergl(
                x=report_map.xy[idx, 0],
                y=report_map.xy[idx, 1],
                mode="markers",
                name=f"{name} ({idx.size:,})",
                marker={
                    "size": 5,
                    "opacity": 0.75,
                    "color": CATEGORY_COLOURS[k % len(CATEGORY_COLOURS)],
                },
                customdata=idx,
                hovertext=_hover(report_map, idx, hover_chars),
                hoverinfo="text",
            )
        )
    if len(neighbour_idx):
        nb = np.asarray(neighbour_idx, dtype=int)
        fig.add_trace(
            go.Scattergl(
                x=report_map.xy[nb, 0],
                y=report_map.xy[nb, 1],
                mode="markers",
                name="nearest reports",
                marker={"size": 11, "symbol": "circle-open", "color": "#000", "line": {"width": 2}},
                customdata=nb,
                hovertext=_hover(report_map, nb, max(hover_chars, 220)),
                hoverinfo="text",
            )
        )
    if image_xy is not None:
        fig.add_trace(
            go.Scattergl(
                x=[image_xy[0]],
                y=[image_xy[1]],
                mode="markers",
                name="your image",
                marker={
                    "size": 20,
                    "symbol": "star",
                    "color": "#d62728",
                    "line": {"width": 1.5, "color": "#fff"},
                },
                hovertext=["your image (placed among its nearest reports)"],
                hoverinfo="text",
            )
        )
        # Named in words too: a placed image often sits on top of its nearest reports, where
        # plotly's hover prefers the smaller report markers to the star.
        fig.add_annotation(
            x=image_xy[0],
            y=image_xy[1],
            text="your image",
            showarrow=True,
            arrowhead=2,
            ax=45,
            ay=-40,
            font={"color": "#d62728", "size": 13},
            bgcolor="rgba(255,255,255,0.85)",
        )
    fig.update_layout(
        title=title
        or f"{report_map.corpus}: {len(report_map):,} reports, {report_map.model} text embeddings (UMAP)",
        dragmode="lasso",
        height=620,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        xaxis={"visible": False},
        yaxis={"visible": False},
        legend={"itemsizing": "constant"},
        template="plotly_white",
    )
    return fig


# --- batch ------------------------------------------------------------------------------------


def calibration_figure(bins: Sequence[Mapping[str, float]], model: str) -> go.Figure:
    """Reliability plot: mean P(affirmed) per bin against the share of positive cases.

    Args:
        bins: One mapping per bin with the keys ``"mean P(affirmed)"``, ``"share positive"``
            and ``"cases"`` (as :meth:`explorer.eval.batch.Evaluation.calibration` gives).
        model: The model's name, for the title and the legend.
    """
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dot", "color": "#999"}
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[b["mean P(affirmed)"] for b in bins],
            y=[b["share positive"] for b in bins],
            mode="lines+markers",
            name=model,
            marker={
                "size": [
                    6 + 14 * np.sqrt(b["cases"] / max(1, max(c["cases"] for c in bins)))
                    for b in bins
                ]
            },
            text=[f"{b['cases']} cases" for b in bins],
        )
    )
    fig.update_layout(
        title=f"Calibration of P(affirmed), {model}",
        xaxis_title="mean P(affirmed) in bin",
        yaxis_title="share of positive labels",
        height=380,
        template="plotly_white",
        margin={"l": 50, "r": 10, "t": 50, "b": 40},
    )
    return fig

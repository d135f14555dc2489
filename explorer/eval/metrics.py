"""Metrics of the evaluation package: the one home of every figure the benchmarks report.

* :func:`auc_score` - ROC AUC by the rank statistic (the benchmark's zero-shot AUC, the batch
  analysis's per-finding AUC).
* :func:`accuracy_at` - share of verdicts right at a probability threshold.
* :func:`calibration_bins` - reliability bins: mean predicted probability vs share positive.
* :func:`recall_at_k` - retrieval recall from a ranked hit table.
* :func:`pointing_hit` and :func:`perfect_grid_map` - the pointing game and its ceiling at a
  coarse map resolution.
* :func:`nearest_rank` and :func:`p95` - percentiles of timings (speed bench, load test).
* :func:`mean_or_nan` - a mean that is NaN, not a warning, over no values.

Everything here is a plain function of arrays: no model, no rendering, no files. Only
:func:`perfect_grid_map` needs torch (imported when called), so the load test and the speed
bench can import this module cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank statistic (ties count one half); NaN without both classes.

    Args:
        labels: Truth per case (anything ``bool`` reads: 1/0, True/False).
        scores: Score per case, higher meaning "more likely positive".

    Returns:
        The probability that a random positive scores above a random negative.
    """
    labels = np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order), dtype=np.float64)
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def accuracy_at(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
    """Share of cases whose verdict ``probs >= threshold`` equals the label; NaN for no cases."""
    labels = np.asarray(labels, dtype=bool)
    probs = np.asarray(probs)
    if len(labels) == 0:
        return float("nan")
    return float(((probs >= threshold) == labels).mean())


def calibration_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """Reliability bins over ``[0, 1]``: mean predicted probability vs share positive.

    Bins are ``bins`` equal widths, each closed on the left and open on the right except the
    last, which also holds 1.0. Empty bins are left out.

    Args:
        probs: Predicted probability of the positive class per case.
        labels: Truth per case (1/True = positive).
        bins: Number of equal-width bins.

    Returns:
        One dict per non-empty bin: ``bin`` ("0.3-0.4"), ``mean P(affirmed)``,
        ``share positive`` and ``cases``.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if m.any():
            out.append(
                {
                    "bin": f"{lo:.1f}-{hi:.1f}",
                    "mean P(affirmed)": float(p[m].mean()),
                    "share positive": float(y[m].mean()),
                    "cases": int(m.sum()),
                }
            )
    return out


def recall_at_k(hits: np.ndarray, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval recall: share of queries with a hit among their first ``k`` results.

    Args:
        hits: Boolean ``[queries, ranked results]``: whether each ranked result is a right one.
        ks: Cut-offs, each at most the number of ranked results.

    Returns:
        ``{"R@1": ..., "R@5": ..., ...}``.
    """
    hits = np.asarray(hits, dtype=bool)
    return {f"R@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


def pointing_hit(attribution: np.ndarray, mask: np.ndarray, dilate_px: int = 3) -> bool:
    """The pointing game: does the map's maximum fall inside the (dilated) mask?

    Args:
        attribution: ``[H, W]`` map (signed maps: the most positive value counts).
        mask: Boolean ``[H, W]`` ground-truth region, same shape.
        dilate_px: Tolerance: the mask is grown by every pixel within this Euclidean distance.

    Returns:
        True on a hit. A constant map (no maximum to point with) or an empty mask is a miss;
        among tied maxima the first in row-major order counts.

    Raises:
        ValueError: The two arrays are not 2-D of one shape, the map is not finite, or
            ``dilate_px`` is negative.
    """
    attr = np.asarray(attribution, dtype=np.float64)
    region = np.asarray(mask, dtype=bool)
    if attr.ndim != 2 or attr.shape != region.shape:
        raise ValueError(
            f"attribution and mask must be 2-D arrays of one shape, got {attr.shape} and {region.shape}"
        )
    if not np.isfinite(attr).all():
        raise ValueError("the attribution contains NaN or infinite values")
    if dilate_px < 0:
        raise ValueError(f"dilate_px must be non-negative, got {dilate_px}")
    if not region.any() or attr.max() == attr.min():
        return False
    if dilate_px > 0:
        from scipy.ndimage import binary_dilation

        r = int(dilate_px)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        region = binary_dilation(region, structure=(yy**2 + xx**2) <= r * r)
    row, col = np.unravel_index(int(np.argmax(attr)), attr.shape)
    return bool(region[row, col])


def perfect_grid_map(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The best map a ``grid``-resolution layer can draw of ``mask``, at the mask's size.

    Each cell holds the share of its pixels inside the mask; the grid is resized bilinearly,
    as Grad-CAM's is. Its pointing-game hit rate bounds any map of that resolution.
    """
    import torch
    import torch.nn.functional as F

    cells = F.adaptive_avg_pool2d(torch.from_numpy(np.asarray(mask, np.float32))[None, None], grid)
    up = F.interpolate(cells, size=mask.shape, mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by nearest rank: the sorted sample at index ``int(q * n)`` (clamped).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not len(values):
        raise ValueError("a percentile needs at least one value")
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def p95(values: Sequence[float]) -> float:
    """95th percentile, nearest rank (the value 95% of the sorted samples do not exceed)."""
    return nearest_rank(values, 0.95)


def mean_or_nan(values: Sequence[float]) -> float:
    """The mean of ``values`` (booleans count 1/0), NaN when there are none."""
    return float(np.mean(values)) if len(values) else float("nan")

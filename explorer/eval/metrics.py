"""Metrics of the evaluation package: the one home of every figure the benchmarks report.

* :func:`auc_score` - ROC AUC by the rank statistic (the benchmark's zero-shot AUC, the batch
  analysis's per-finding AUC).
* :func:`accuracy_at` - share of verdicts right at a probability threshold.
* :func:`calibration_bins` - reliability bins: mean predicted probability vs share positive.
* :func:`recall_at_k` - retrieval recall from a ranked hit table.
* :func:`relevance_mass` and :func:`relevance_rank` - how much of a map lies on the lesion.
* :func:`pointing_hit` and :func:`perfect_grid_map` - the pointing game and its ceiling at a
  coarse map resolution.
* :func:`nearest_rank` and :func:`p95` - percentiles of timings (speed bench, load test).
* :func:`mean_or_nan` - a mean that is NaN, not a warning, over no values.
* :func:`bootstrap_by_patient` - a percentile bootstrap interval that resamples patients, so
  several films of one patient stay together (the real-film benchmark's intervals).

Everything here is a plain function of arrays: no model, no rendering, no files. Only
:func:`perfect_grid_map` needs torch (imported when called), so the load test and the speed
bench can import this module cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

#: Fewest positive and fewest negative cases for an AUC worth showing (fewer: its interval
#: spans most of [0, 1]); the real benchmark's table and the batch's metrics both use it.
MIN_AUC_CASES = 10


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


def relevance_mass(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Relevance mass accuracy (Arras et al. 2022): the share of the map's positive mass that
    lies inside the mask (1 = all the evidence for the prompt is on the lesion).

    NaN for a map with no positive value or an empty mask.
    """
    attr = np.clip(np.asarray(attribution, dtype=np.float64), 0, None)
    region = np.asarray(mask, dtype=bool)
    total = attr.sum()
    if attr.shape != region.shape:
        raise ValueError(f"attribution and mask differ in shape: {attr.shape} and {region.shape}")
    if total <= 0 or not region.any():
        return float("nan")
    return float(attr[region].sum() / total)


def relevance_rank(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Relevance rank accuracy (Arras et al. 2022): of the map's ``K`` highest pixels, with
    ``K`` the mask's size, the share inside the mask (chance: the mask's share of the image).

    NaN for an empty mask.
    """
    attr = np.asarray(attribution, dtype=np.float64).ravel()
    region = np.asarray(mask, dtype=bool).ravel()
    if attr.shape != region.shape:
        raise ValueError("attribution and mask differ in shape")
    k = int(region.sum())
    if k == 0:
        return float("nan")
    top = np.argpartition(-attr, k - 1)[:k]
    return float(region[top].mean())


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
    """The ``q`` quantile by nearest rank: the smallest sample that at least ``q`` of the
    samples do not exceed (the ``ceil(q * n)``-th smallest; of 20 samples the p95 is the 19th,
    of 6 the 6th).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not len(values):
        raise ValueError("a percentile needs at least one value")
    xs = sorted(values)
    rank = math.ceil(round(q * len(xs), 9))  # (rounded: 0.95 * 20 is 19.000000000000004)
    return xs[min(len(xs), max(1, rank)) - 1]


def p95(values: Sequence[float]) -> float:
    """95th percentile, nearest rank (the value 95% of the sorted samples do not exceed)."""
    return nearest_rank(values, 0.95)


def mean_or_nan(values: Sequence[float]) -> float:
    """The mean of ``values`` (booleans count 1/0), NaN when there are none."""
    return float(np.mean(values)) if len(values) else float("nan")


def bootstrap_by_patient(
    patients: Sequence[str],
    statistic: Callable[[np.ndarray], float | np.ndarray],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> np.ndarray:
    """Percentile bootstrap interval of a figure, resampling *patients* (not images).

    Each resample draws as many patients as there are, with replacement, and keeps every row
    of a drawn patient together (a patient drawn twice brings all its rows twice), so films of
    one patient never split between "in" and "out" and the interval is not too narrow when a
    patient has many films.

    Args:
        patients: The patient of each row (``[n]``).
        statistic: Called with the row indices of one resample (``int [m]``, repeats allowed)
            and returning a figure or a 1-D array of figures (e.g. one AUC per finding). NaN
            results (a resample without both classes) are left out of the percentiles.
        resamples: How many bootstrap resamples.
        seed: Seed of the random generator (same seed, same interval).
        level: Coverage of the interval (0.95 = 2.5th to 97.5th percentile).

    Returns:
        ``[2, ...]``: the lower and upper bounds (``[2]`` for a scalar statistic, ``[2, k]``
        for ``k`` figures); NaN where no resample gave a finite figure.

    Raises:
        ValueError: No rows, ``resamples < 1`` or ``level`` outside (0, 1).
    """
    if len(patients) == 0:
        raise ValueError("a bootstrap needs at least one row")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    _, patient_of_row = np.unique(
        np.asarray(patients, dtype=object).astype(str), return_inverse=True
    )
    n_patients = int(patient_of_row.max()) + 1
    rows = np.arange(len(patient_of_row))
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(resamples):
        drawn = np.bincount(rng.integers(0, n_patients, n_patients), minlength=n_patients)
        stats.append(np.asarray(statistic(np.repeat(rows, drawn[patient_of_row])), dtype=float))
    table = np.stack(stats)
    tail = (1.0 - level) / 2.0 * 100.0
    out = np.full((2, *table.shape[1:]), np.nan)
    finite = np.isfinite(table)
    if finite.all():
        return np.percentile(table, [tail, 100.0 - tail], axis=0)
    flat = table.reshape(resamples, -1)
    for j in range(flat.shape[1]):
        col = flat[np.isfinite(flat[:, j]), j]
        if len(col):
            out.reshape(2, -1)[:, j] = np.percentile(col, [tail, 100.0 - tail])
    return out

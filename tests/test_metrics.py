"""Every metric of explorer.eval.metrics on cases small enough to work out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from explorer.eval.metrics import (
    accuracy_at,
    auc_score,
    bootstrap_by_patient,
    calibration_bins,
    mean_or_nan,
    nearest_rank,
    p95,
    perfect_grid_map,
    pointing_hit,
    recall_at_k,
)


def test_auc_by_hand():
    assert auc_score(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.1, 0.2])) == 1.0
    assert auc_score(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.9, 0.8])) == 0.0
    # one tie between a positive and a negative counts one half: (1 + 0.5) / 2
    assert auc_score(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.9, 0.1])) == pytest.approx(0.875)
    assert math.isnan(auc_score(np.array([1, 1]), np.array([0.1, 0.2])))


def test_auc_counts_ordered_pairs():
    # positives 0.6, 0.4; negatives 0.5, 0.3, 0.4. Pairs (pos above neg): 0.6 beats all three,
    # 0.4 beats 0.3, ties 0.4 (one half), loses to 0.5: (3 + 1 + 0.5) / 6
    labels = np.array([True, False, True, False, False])
    scores = np.array([0.6, 0.5, 0.4, 0.3, 0.4])
    assert auc_score(labels, scores) == pytest.approx(4.5 / 6)
    assert auc_score(~labels, scores) == pytest.approx(1 - 4.5 / 6)  # the classes swapped
    assert math.isnan(auc_score(np.array([], dtype=bool), np.array([])))


def test_accuracy_at_a_threshold():
    y = np.array([1, 1, 0, 0], dtype=bool)
    p = np.array([0.9, 0.5, 0.49, 0.7])
    assert accuracy_at(y, p) == 0.75  # 0.5 counts as affirmed; 0.7 is the one wrong verdict
    assert accuracy_at(y, p, threshold=0.8) == 0.75  # 0.5 now wrong, 0.7 now right
    assert accuracy_at(y, p, threshold=0.95) == 0.5  # every verdict negative
    assert math.isnan(accuracy_at(np.array([], dtype=bool), np.array([])))


def test_calibration_bins_by_hand():
    probs = np.array([0.05, 0.15, 0.12, 1.0, 0.95, 0.1])
    labels = np.array([0, 1, 0, 1, 1, 1])
    bins = calibration_bins(probs, labels, 10)
    assert [b["bin"] for b in bins] == ["0.0-0.1", "0.1-0.2", "0.9-1.0"]  # empty bins left out
    low, mid, top = bins
    assert low == {"bin": "0.0-0.1", "mean P(affirmed)": 0.05, "share positive": 0.0, "cases": 1}
    # 0.1 sits on an edge: it belongs to the bin it opens
    assert mid["cases"] == 3 and mid["share positive"] == pytest.approx(2 / 3)
    assert mid["mean P(affirmed)"] == pytest.approx((0.15 + 0.12 + 0.1) / 3)
    # the last bin is closed on the right: 1.0 is counted
    assert top["cases"] == 2 and top["share positive"] == 1.0
    assert top["mean P(affirmed)"] == pytest.approx(0.975)
    two = calibration_bins(probs, labels, 2)
    assert [(b["bin"], b["cases"]) for b in two] == [("0.0-0.5", 4), ("0.5-1.0", 2)]
    assert calibration_bins(np.array([]), np.array([])) == []


def test_recall_at_k_by_hand():
    hits = np.array(
        [
            [True, False, False],  # found first
            [False, False, True],  # found third
            [False, False, False],  # not found
            [False, True, True],  # found second
        ]
    )
    assert recall_at_k(hits, (1, 2, 3)) == {"R@1": 0.25, "R@2": 0.5, "R@3": 0.75}


def test_pointing_hit_on_hand_made_arrays():
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 2:4] = True
    attr = np.zeros((8, 8))
    attr[3, 3] = 1.0
    assert pointing_hit(attr, mask)
    near = np.zeros((8, 8))
    near[3, 5] = 1.0  # two columns right of the mask
    assert not pointing_hit(near, mask, dilate_px=1)
    assert pointing_hit(near, mask, dilate_px=2)
    diagonal = np.zeros((8, 8))
    diagonal[5, 5] = 1.0  # (2, 2) from the corner (3, 3): distance 2.83
    assert not pointing_hit(diagonal, mask, dilate_px=2)  # a disc, not a square
    assert pointing_hit(diagonal, mask, dilate_px=3)
    assert not pointing_hit(np.ones((8, 8)), mask), "a constant map points nowhere"
    assert not pointing_hit(attr, np.zeros_like(mask)), "an empty mask cannot be hit"
    signed = -np.ones((8, 8))
    signed[2, 2] = -0.5  # the most positive value counts, not the largest magnitude
    assert pointing_hit(signed, mask)
    with pytest.raises(ValueError, match="one shape"):
        pointing_hit(attr, mask[:4])
    with pytest.raises(ValueError, match="NaN"):
        pointing_hit(np.full((8, 8), np.nan), mask)
    with pytest.raises(ValueError, match="non-negative"):
        pointing_hit(attr, mask, dilate_px=-1)


def test_a_coarse_grid_cannot_point_at_a_small_lesion():
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:13, 10:13] = True  # 3x3 px, inside the top-left cell of a 2x2 grid, off its centre
    coarse = perfect_grid_map(mask, (2, 2))
    assert coarse.shape == mask.shape and coarse.max() == pytest.approx(9 / 32**2)
    assert not pointing_hit(coarse, mask, 3)
    assert pointing_hit(perfect_grid_map(mask, (64, 64)), mask, 0)
    assert pointing_hit(perfect_grid_map(mask, (16, 16)), mask, 3)


def test_perfect_grid_map_cells_hold_the_mask_share():
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, :2] = True  # half of the top-left 2x2 cell
    cells = perfect_grid_map(mask, (2, 2))
    assert cells.dtype == np.float32 and cells.shape == (4, 4)
    # bilinear upsampling of [[0.5, 0], [0, 0]]: the corner pixel keeps the cell's value
    assert cells[0, 0] == pytest.approx(0.5) and cells[3, 3] == pytest.approx(0.0)


def test_percentiles_by_nearest_rank():
    # the ceil(q * n)-th smallest: the smallest value at least q of the samples do not exceed
    assert p95(list(range(1, 21))) == 19  # 95 % of 20 is 19 samples
    assert p95(list(range(10, 0, -1))) == 10  # sorted first; ceil(9.5) = 10th
    assert p95([float(x) for x in range(1, 101)]) == 95
    assert p95([1, 2, 3, 4, 5, 6]) == 6  # of six, the largest
    assert p95([3.5]) == 3.5
    assert nearest_rank([4, 1, 3, 2], 0.5) == 2
    assert nearest_rank([4, 1, 3, 2], 0.0) == 1 and nearest_rank([4, 1, 3, 2], 1.0) == 4
    with pytest.raises(ValueError):
        p95([])


def test_mean_or_nan():
    assert mean_or_nan([True, False, True, True]) == 0.75
    assert mean_or_nan([0.5]) == 0.5
    assert math.isnan(mean_or_nan([]))


# --- bootstrap by patient ------------------------------------------------------------------------


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    values = rng.normal(size=60)
    patients = [f"p{k // 2}" for k in range(60)]  # two films each

    def mean(idx):
        return values[idx].mean()

    low, high = bootstrap_by_patient(patients, mean, resamples=500, seed=1)
    assert low < values.mean() < high
    assert high - low < 1.0  # about 4 standard errors of 60 normal values, not the spread
    again = bootstrap_by_patient(patients, mean, resamples=500, seed=1)
    other = bootstrap_by_patient(patients, mean, resamples=500, seed=2)
    assert np.array_equal(again, [low, high]) and not np.array_equal(other, [low, high])


def test_bootstrap_keeps_a_patients_rows_together():
    patients = ["many"] * 30 + [f"single{k}" for k in range(10)]
    draws = []

    def record(idx):
        counts = np.bincount(idx, minlength=40)
        draws.append(counts)
        return float(counts[:30].sum())

    bootstrap_by_patient(patients, record, resamples=200, seed=0)
    counts = np.stack(draws)
    # every film of "many" comes in as often as the others of that patient
    assert (counts[:, :30] == counts[:, :1]).all()
    # 11 patients drawn each time: 'many' (30 rows) and the singles weigh the same
    per_patient = counts[:, :1].ravel() + counts[:, 30:].sum(axis=1)
    assert (per_patient == 11).all()
    assert (counts[:, 0] == 0).any() and (counts[:, 0] >= 2).any()


def test_bootstrap_by_patient_is_wider_than_by_image():
    # one patient's 30 films all positive, ten other patients negative: resampling images
    # would pretend there are 40 independent films
    values = np.array([1.0] * 30 + [0.0] * 10)
    by_patient = bootstrap_by_patient(["a"] * 30 + list("bcdefghijk"), lambda i: values[i].mean())
    by_image = bootstrap_by_patient([str(k) for k in range(40)], lambda i: values[i].mean())
    assert by_patient[1] - by_patient[0] > 2 * (by_image[1] - by_image[0])


def test_bootstrap_vector_statistic_and_nan_resamples():
    labels = np.array([1] * 3 + [0] * 17)

    def stats(idx):
        y = labels[idx]
        share = y.mean()
        return [share, share if y.any() else np.nan]  # the second is NaN without positives

    out = bootstrap_by_patient([str(k) for k in range(20)], stats, resamples=300)
    assert out.shape == (2, 2)
    assert out[0, 0] == 0.0 and out[0, 1] > 0.0  # NaN resamples are left out, not zeros
    with pytest.raises(ValueError, match="at least one row"):
        bootstrap_by_patient([], stats)
    with pytest.raises(ValueError, match="level"):
        bootstrap_by_patient(["a"], stats, level=1.5)


def test_relevance_mass_and_rank_accuracy():
    from explorer.eval.metrics import relevance_mass, relevance_rank

    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    attr = np.full((4, 4), -0.1)
    attr[0, 0], attr[1, 1] = 3.0, -5.0  # on the lesion: evidence for, and against (not counted)
    attr[3, 3], attr[3, 2], attr[2, 3] = 0.5, 0.3, 0.2  # off the lesion
    assert relevance_mass(attr, mask) == pytest.approx(3.0 / 4.0)
    assert relevance_rank(attr, mask) == pytest.approx(0.25)  # top 4 pixels: 1 on the lesion
    assert relevance_rank(np.where(mask, 1.0, 0.0), mask) == 1.0
    assert np.isnan(relevance_mass(-np.ones((4, 4)), mask))
    assert np.isnan(relevance_rank(attr, np.zeros((4, 4), bool)))

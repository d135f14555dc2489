"""The supervised upper bound of a zero-shot benchmark: a linear probe on the image tower.

Zero-shot scoring asks the text tower which of two prompts fits an image; a linear probe asks
only whether the image tower's features hold the finding at all. The probe is one logistic
regression per finding (scikit-learn's, balanced classes, standardised features, ``C`` =
:data:`PROBE_C`), fitted on the films a model was trained on and scored on held-out films
with the same AUC and patient bootstrap as :func:`explorer.eval.real_benchmark.run_manifest_benchmark`.
The features are the domain guard's (:func:`explorer.guard.image_features`: the last spatial
layer averaged over the image), so the probe reads the tower before the projection to text.

When the probe's AUC for a finding is far above the zero-shot AUC, the tower sees the finding
and the text side (or the pairing of films with text) is what loses it; when both are low, the
tower itself does not see it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from explorer.data.manifest import Manifest
from explorer.eval.metrics import auc_score, bootstrap_by_patient
from explorer.models.base import VisionLanguageModel

#: Inverse regularisation strength of each finding's logistic regression.
PROBE_C = 0.5
#: Fewest positive (and negative) training films a finding needs for a probe.
MIN_TRAIN_POSITIVES = 5


def fit_probes(
    train_x: np.ndarray, train_y: np.ndarray, findings, min_positives: int = MIN_TRAIN_POSITIVES
):
    """One standardised, balanced logistic regression per finding with enough positives.

    Args:
        train_x: ``[N, C]`` features.
        train_y: ``[N, K]`` labels over ``findings``; positive where ``> 0``.
        findings: The ``K`` finding names.
        min_positives: Fewest positives and negatives a finding needs.

    Returns:
        ``score(x) -> {finding: [M] decision values}`` for the findings that got a probe.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    tx = scaler.transform(train_x)
    probes = {}
    for j, f in enumerate(findings):
        y = np.asarray(train_y)[:, j] > 0
        if y.sum() < min_positives or (~y).sum() < min_positives:
            continue
        probes[f] = LogisticRegression(C=PROBE_C, class_weight="balanced", max_iter=2000).fit(tx, y)

    def score(x: np.ndarray) -> dict[str, np.ndarray]:
        sx = scaler.transform(x)
        return {f: clf.decision_function(sx) for f, clf in probes.items()}

    return score


@dataclass(frozen=True)
class ProbeResult:
    """A linear probe's held-out AUCs, with 95 % patient-bootstrap intervals."""

    model: str
    train: str
    test: str
    train_films: int
    test_films: int
    auc: dict[str, float]
    auc_ci: dict[str, tuple[float, float]]
    mean_auc: float
    mean_auc_ci: tuple[float, float]
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _features(model: VisionLanguageModel, manifest: Manifest) -> np.ndarray:
    from explorer.guard import image_features

    return np.concatenate([image_features(model, row.pixels()) for row in manifest.rows])


def run_linear_probe(
    model: VisionLanguageModel,
    train: Manifest,
    test: Manifest,
    *,
    min_cases: int = 10,
    resamples: int = 1000,
    seed: int = 0,
) -> ProbeResult:
    """Fit probes on ``train``'s films and score ``test``'s, as the zero-shot benchmark does.

    Args:
        model: A loaded model.
        train: The films the model was trained on (never the test films).
        test: Held-out films (patient-disjoint from ``train``).
        min_cases: Fewest positive and fewest negative test films a finding needs for its AUC
            (the zero-shot benchmark's rule, so the two tables cover the same findings).
        resamples: Bootstrap resamples of test patients.
        seed: Seeds the bootstrap.

    Raises:
        ValueError: the two manifests share a patient, or one has no rows.
    """
    t0 = time.perf_counter()
    if not train.rows or not test.rows:
        raise ValueError("the linear probe needs training and test films")
    shared = set(train.patients()) & set(test.patients())
    if shared:
        raise ValueError(f"{len(shared)} patients are in both {train.name} and {test.name}")
    findings = tuple(f for f in test.findings if f in train.findings)
    score = fit_probes(_features(model, train), train.label_matrix(findings), findings)
    scores = score(_features(model, test))
    labels = test.label_matrix(findings)
    kept = [
        f
        for j, f in enumerate(findings)
        if f in scores and min((labels[:, j] == 1).sum(), (labels[:, j] == 0).sum()) >= min_cases
    ]
    truth = {f: labels[:, findings.index(f)] for f in kept}

    def figures(idx: np.ndarray) -> np.ndarray:
        aucs = []
        for f in kept:
            y, s = truth[f][idx], scores[f][idx]
            known = (y == 1) | (y == 0)
            aucs.append(auc_score(y[known] == 1, s[known]))
        return np.array([np.nanmean(aucs) if aucs else np.nan, *aucs])

    point = figures(np.arange(len(test.rows)))
    ci = bootstrap_by_patient(test.patients(), figures, resamples, seed)
    return ProbeResult(
        model=model.name,
        train=train.name,
        test=test.name,
        train_films=len(train.rows),
        test_films=len(test.rows),
        auc={f: float(point[1 + k]) for k, f in enumerate(kept)},
        auc_ci={f: (float(ci[0, 1 + k]), float(ci[1, 1 + k])) for k, f in enumerate(kept)},
        mean_auc=float(point[0]),
        mean_auc_ci=(float(ci[0, 0]), float(ci[1, 0])),
        seconds=time.perf_counter() - t0,
    )


def format_probe_table(results) -> str:
    """A markdown table of probes: one column per model, intervals in brackets."""
    if not results:
        return ""
    head = "| linear probe (" + results[0].train + " -> " + results[0].test + ") | "
    lines = [head + " | ".join(r.model for r in results) + " |", "|---|" + "---|" * len(results)]

    def fig(v, ci):
        return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    lines.append(
        "| AUC, mean | " + " | ".join(fig(r.mean_auc, r.mean_auc_ci) for r in results) + " |"
    )
    for f in dict.fromkeys(f for r in results for f in r.auc):
        lines.append(
            f"| AUC {f} | "
            + " | ".join(fig(r.auc[f], r.auc_ci[f]) if f in r.auc else "-" for r in results)
            + " |"
        )
    return "\n".join(lines)


__all__ = [
    "MIN_TRAIN_POSITIVES",
    "PROBE_C",
    "ProbeResult",
    "fit_probes",
    "format_probe_table",
    "run_linear_probe",
]

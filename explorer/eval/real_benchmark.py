"""The negation benchmark on any labelled image manifest (real radiographs).

The phantom benchmark (:mod:`explorer.eval.benchmark`) scores held-out phantoms, whose truth is
known exactly. This one scores the rows of a :class:`~explorer.data.manifest.Manifest` (NIH
ChestX-ray14, MIMIC-CXR-JPG, a CXR-Align JSON, a hospital's own export), with the same figures
computed by the same code:

* **Zero-shot AUC** per finding with at least :data:`MIN_CASES` positive and as many negative
  films (uncertain and blank labels left out): the softmax over each (affirmed, negated) prompt
  pair, averaged over the prompt templates (:func:`~explorer.eval.benchmark.zero_shot_probabilities`,
  as :func:`explorer.scoring.score_findings` scores one image); ``mean_auc`` is their mean.
* **Task A**: the image against its report and the same report with one present finding
  negated (:func:`explorer.vocab.negation.negate_report` with that finding's terms); **task B**
  adds the report with that finding's sentences dropped (:func:`explorer.reports.writer.omit_finding`)
  and needs the true report to beat both (:func:`~explorer.eval.benchmark.hard_negative_scores`).
  The report is, in order of preference: a CXR-Align row's released negated / omitted reports
  (``extra["negation"]``, ``extra["omitted"]``, ``extra["chosen"]``); the manifest's own report
  text (a seeded choice of the present findings whose negation changes it); else a report
  written from the film's labels (:func:`explorer.reports.writer.write_report`). Which source
  each row used is counted in ``task_a_sources``.
* **Pointing game** on the manifest's expert boxes: for each boxed finding that has a prompt
  ("there is X"), a hit is the attribution map's peak inside the box
  (:func:`~explorer.eval.metrics.pointing_hit`, no dilation), per method with each method's
  default options.
* **95 % intervals by patient** (:func:`~explorer.eval.metrics.bootstrap_by_patient`) on
  every AUC, the mean AUC, task A and task B, so two models can be compared honestly.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from explorer.data.manifest import Manifest, ManifestRow
from explorer.eval.benchmark import (
    POINTING_METHODS,
    hard_negative_scores,
    methods_for,
    zero_shot_probabilities,
)
from explorer.eval.metrics import (
    MIN_AUC_CASES,
    auc_score,
    bootstrap_by_patient,
    mean_or_nan,
    pointing_hit,
    relevance_mass,
    relevance_rank,
)
from explorer.models.base import VisionLanguageModel
from explorer.progress import Progress
from explorer.scoring import embed_texts_once
from explorer.vocab.labels import POSITIVE, canonical_finding, known_finding

log = logging.getLogger(__name__)

#: A finding enters the zero-shot table with at least this many positives and negatives.
MIN_CASES = MIN_AUC_CASES
#: Bootstrap resamples (of patients) per interval.
RESAMPLES = 1000


def prompt_name(finding: str) -> str:
    """How a manifest finding is put into the prompt templates: a known (CheXpert or extra NIH)
    name as it is (its phrase comes from ``prompts.json``), any other as its name in lower case."""
    return finding if known_finding(finding) else finding.replace("_", " ").lower()


@dataclass(frozen=True)
class RowTexts:
    """The task-A/B texts of one row.

    Attributes:
        true: The row's report (given or written).
        negated: It with one present finding negated (None: the row has no task).
        omitted: It with that finding's sentences dropped (None when not known).
        finding: The finding that was negated.
        source: ``"cxr-align"`` (released negated report), ``"report"`` (the manifest's text)
            or ``"written"`` (:func:`explorer.reports.writer.write_report`).
    """

    true: str
    negated: str | None
    omitted: str | None
    finding: str | None
    source: str


def row_texts(row: ManifestRow, seed: int = 0) -> RowTexts:
    """The true, negated and omitted reports of one row (see the module docstring).

    Args:
        row: A manifest row.
        seed: With the row's key, picks the negated finding and the written phrasings.
    """
    from explorer.reports.writer import omit_finding, write_report
    from explorer.vocab.negation import negate_report

    row_seed = [seed, zlib.crc32(row.key.encode("utf-8"))]
    if row.report and row.extra.get("negation"):
        return RowTexts(
            row.report,
            row.extra["negation"],
            row.extra.get("omitted") or None,
            row.extra.get("chosen") or None,
            "cxr-align",
        )
    if row.report:
        text, source = row.report, "report"
    else:
        text = write_report(row.labels, int(np.random.default_rng(row_seed).integers(2**31)))
        source = "written"
    present = [
        f for f, v in row.labels.items() if v == POSITIVE and canonical_finding(f) != "No Finding"
    ]
    np.random.default_rng(row_seed).shuffle(present)
    for finding in present:
        negated = negate_report(text, [prompt_name(finding)])
        if negated != text:
            return RowTexts(
                text, negated, omit_finding(text, prompt_name(finding)), finding, source
            )
    return RowTexts(text, None, None, None, source)


@dataclass(frozen=True)
class ManifestBenchmarkResult:
    """Figures of one model on one manifest.

    Intervals are ``(low, high)`` 95 % percentile-bootstrap bounds, patients resampled.

    Attributes:
        model: The model's name.
        manifest: The manifest's name.
        images: Rows scored.
        problems: Rows the manifest reader skipped.
        auc: Zero-shot AUC per finding with enough cases.
        auc_ci: Its interval per finding.
        cases: ``(positives, negatives)`` per labelled finding (also those left out).
        mean_auc: The mean of :attr:`auc`.
        mean_auc_ci: Its interval.
        task_a: Share of task rows where the true report beats the negated one.
        task_a_ci: Its interval.
        task_a_n: Rows with a task (a present finding whose negation changes the report).
        task_a_sources: Task rows per report source (cxr-align / report / written).
        task_a_by_finding: Task A accuracy grouped by the negated finding.
        task_b: Share where the true report beats both the negated and the omitted one.
        task_b_ci: Its interval.
        task_b_n: Rows counted for task B (task rows).
        pointing: Hit rate per attribution method over the boxed findings with a prompt.
        pointing_per_finding: Method -> finding -> hit rate.
        pointing_n: Boxes scored.
        pointing_params: Method -> the options its maps were made with.
        relevance_mass: Method -> mean share of the map's positive mass inside the box.
        relevance_rank: Method -> mean share of the map's top box-size pixels inside the box.
        pointing_unavailable: Method -> why the model cannot run it (attention on a
            convolutional image tower).
        task_texts_truncated: Task A/B texts (true, negated, omitted) longer than the model's
            text limit, so cut before they were embedded (the cut part was never read).
        text_limit: That limit in tokens (None when the model does not say).
        patients: Distinct patients (the bootstrap's unit).
        min_cases: Fewest positives and negatives a finding needed for its AUC.
        resamples: Bootstrap resamples.
        seed: The seed of the task texts and the bootstrap.
        seconds: Wall time of the run.
        task_a_rows: Per manifest row, 1 where task A was right, 0 where wrong, -1 where the
            row has no task (pairs two models' runs: :func:`task_a_difference`).
    """

    model: str
    manifest: str
    images: int
    problems: int
    auc: dict[str, float]
    auc_ci: dict[str, tuple[float, float]]
    cases: dict[str, tuple[int, int]]
    mean_auc: float
    mean_auc_ci: tuple[float, float]
    task_a: float
    task_a_ci: tuple[float, float]
    task_a_n: int
    task_a_sources: dict[str, int]
    task_a_by_finding: dict[str, float]
    task_b: float
    task_b_ci: tuple[float, float]
    task_b_n: int
    pointing: dict[str, float] = field(default_factory=dict)
    pointing_per_finding: dict[str, dict[str, float]] = field(default_factory=dict)
    pointing_n: int = 0
    pointing_params: dict[str, dict] = field(default_factory=dict)
    relevance_mass: dict[str, float] = field(default_factory=dict)
    relevance_rank: dict[str, float] = field(default_factory=dict)
    pointing_unavailable: dict[str, str] = field(default_factory=dict)
    task_texts_truncated: int = 0
    text_limit: int | None = None
    patients: int = 0
    min_cases: int = MIN_CASES
    resamples: int = RESAMPLES
    seed: int = 0
    seconds: float = float("nan")
    task_a_rows: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        """A JSON-ready dict (intervals as two-item lists)."""
        return asdict(self)


def embed_rows(
    model: VisionLanguageModel,
    rows: Sequence[ManifestRow],
    batch: int = 32,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Normalised image embeddings ``[N, D]`` of manifest rows, read from disk a batch at a time."""
    out = []
    for k in range(0, len(rows), batch):
        pixels = [r.pixels() for r in rows[k : k + batch]]
        if len({p.shape for p in pixels}) == 1:
            out.append(model.embed_image(np.stack(pixels)).float().cpu())
        else:
            out.extend(model.embed_image(p).float().cpu().reshape(1, -1) for p in pixels)
        if progress is not None:
            progress(min(len(rows), k + batch) / max(1, len(rows)), "embedding images")
    return torch.cat(out) if out else torch.empty(0)


def _pointing(
    model: VisionLanguageModel, rows: Sequence[ManifestRow], methods: Sequence[str]
) -> tuple[
    dict[str, list[bool]],
    dict[str, dict[str, list[bool]]],
    dict[str, dict],
    int,
    dict[str, list[float]],
    dict[str, list[float]],
]:
    """Pointing hits, per-finding hits, parameters, box count, and the relevance mass and rank
    accuracy of every method's map on every expert box."""
    from explorer.attribution import attribute_image
    from explorer.vocab.negation import NegationError
    from explorer.vocab.prompts import prompt_pair

    hits: dict[str, list[bool]] = {m: [] for m in methods}
    per: dict[str, dict[str, list[bool]]] = {m: {} for m in methods}
    params: dict[str, dict] = {}
    mass: dict[str, list[float]] = {m: [] for m in methods}
    rank: dict[str, list[float]] = {m: [] for m in methods}
    count = 0
    for row in rows:
        if not row.boxes:
            continue
        pixels = row.pixels()
        for box in row.boxes:
            try:
                prompt = prompt_pair(prompt_name(box.finding), "there_is").affirmed
            except (NegationError, ValueError):
                log.info("no prompt for the boxed finding %r of %s", box.finding, row.key)
                continue
            count += 1
            for method in methods:
                attr = attribute_image(model, pixels, prompt, method)
                params.setdefault(method, dict(attr.params))
                mask = box.mask(attr.attribution.shape, pixels.shape)
                hit = pointing_hit(attr.attribution, mask, dilate_px=0)
                hits[method].append(hit)
                per[method].setdefault(box.finding, []).append(hit)
                mass[method].append(relevance_mass(attr.attribution, mask))
                rank[method].append(relevance_rank(attr.attribution, mask))
    return hits, per, params, count, mass, rank


def run_manifest_benchmark(
    model: VisionLanguageModel,
    manifest: Manifest,
    *,
    min_cases: int = MIN_CASES,
    resamples: int = RESAMPLES,
    seed: int = 0,
    pointing_methods: Sequence[str] = POINTING_METHODS,
    progress: Progress | None = None,
) -> ManifestBenchmarkResult:
    """Run the negation benchmark of ``model`` on the rows of ``manifest``.

    Args:
        model: A loaded model.
        manifest: The rows to score (images are read from disk as they are used).
        min_cases: Fewest positives and fewest negatives a finding needs for its AUC.
        resamples: Bootstrap resamples of patients for the intervals.
        seed: Seeds the negated finding of each row, the written reports and the bootstrap.
        pointing_methods: Attribution methods of the pointing game (empty: no pointing game).
        progress: Optional ``callable(fraction, message)``.

    Returns:
        The :class:`ManifestBenchmarkResult`.

    Raises:
        ValueError: The manifest has no rows.
    """
    start = time.perf_counter()
    rows = manifest.rows
    if not rows:
        raise ValueError(f"the manifest {manifest.name} has no usable rows")
    img = embed_rows(model, rows, progress=progress)
    log.info("%s: %d images embedded (%.1f s)", model.name, len(rows), time.perf_counter() - start)

    # zero-shot AUC over the findings with enough positive and negative films
    findings = manifest.findings or tuple(dict.fromkeys(f for r in rows for f in r.labels))
    labels = manifest.label_matrix(findings)
    cases = {
        f: (int((labels[:, j] == 1).sum()), int((labels[:, j] == 0).sum()))
        for j, f in enumerate(findings)
    }
    kept = [f for f in findings if min(cases[f]) >= min_cases]
    scores = {}
    for f, (_, prob) in zip(
        kept, zero_shot_probabilities(model, img, [prompt_name(f) for f in kept]), strict=True
    ):
        scores[f] = prob.mean(axis=1)
    truth = {f: labels[:, findings.index(f)] for f in kept}

    # tasks A and B
    texts = [row_texts(r, seed) for r in rows]
    task_texts = [x for t in texts for x in (t.true, t.negated, t.omitted) if x]
    cut = int(sum(model.truncated(task_texts)))  # reports longer than the text tower reads
    t_true = embed_texts_once(model, [t.true for t in texts])
    tasks = hard_negative_scores(
        model, img, t_true, [t.negated for t in texts], [t.omitted for t in texts]
    )
    right_a = np.full(len(rows), np.nan)
    right_b = np.full(len(rows), np.nan)
    right_a[tasks.rows] = tasks.right_a
    right_b[tasks.rows] = tasks.right_b
    negated_finding = np.array([texts[k].finding for k in tasks.rows], dtype=object)
    by_finding = {
        f: float(tasks.right_a[negated_finding == f].mean())
        for f in dict.fromkeys(negated_finding)
        if f is not None
    }
    sources: dict[str, int] = {}
    for k in tasks.rows:
        sources[texts[k].source] = sources.get(texts[k].source, 0) + 1

    def figures(idx: np.ndarray) -> np.ndarray:
        aucs = []
        for f in kept:
            y, s = truth[f][idx], scores[f][idx]
            known = (y == 1) | (y == 0)  # uncertain and blank labels left out
            aucs.append(auc_score(y[known] == 1, s[known]))
        a, b = right_a[idx], right_b[idx]
        return np.array(
            [
                np.nanmean(aucs) if aucs and not np.isnan(aucs).all() else np.nan,
                *aucs,
                np.nanmean(a) if np.isfinite(a).any() else np.nan,
                np.nanmean(b) if np.isfinite(b).any() else np.nan,
            ]
        )

    log.info("%s: zero-shot and tasks scored (%.1f s)", model.name, time.perf_counter() - start)
    everything = np.arange(len(rows))
    point = figures(everything)
    ci = bootstrap_by_patient(manifest.patients(), figures, resamples, seed)
    if progress is not None:
        progress(1.0, "bootstrap done")

    def pair(j: int) -> tuple[float, float]:
        return (float(ci[0, j]), float(ci[1, j]))

    log.info("%s: bootstrap done (%.1f s)", model.name, time.perf_counter() - start)
    usable, unavailable = methods_for(model, pointing_methods)
    hits, per, params, boxes, mass, rank = _pointing(model, rows, usable)
    result = ManifestBenchmarkResult(
        model=model.name,
        manifest=manifest.name,
        images=len(rows),
        problems=len(manifest.problems),
        auc={f: float(point[1 + j]) for j, f in enumerate(kept)},
        auc_ci={f: pair(1 + j) for j, f in enumerate(kept)},
        cases=cases,
        mean_auc=float(point[0]),
        mean_auc_ci=pair(0),
        task_a=tasks.task_a,
        task_a_ci=pair(len(kept) + 1),
        task_a_n=len(tasks.rows),
        task_a_sources=sources,
        task_a_by_finding=by_finding,
        task_b=tasks.task_b,
        task_b_ci=pair(len(kept) + 2),
        task_b_n=len(tasks.rows),
        pointing={m: mean_or_nan(v) for m, v in hits.items()},
        pointing_per_finding={m: {f: mean_or_nan(v) for f, v in d.items()} for m, d in per.items()},
        pointing_n=boxes,
        pointing_params=params,
        relevance_mass={m: mean_or_nan([v for v in vs if v == v]) for m, vs in mass.items()},
        relevance_rank={m: mean_or_nan([v for v in vs if v == v]) for m, vs in rank.items()},
        pointing_unavailable=unavailable,
        task_texts_truncated=cut,
        text_limit=model.max_text_tokens,
        patients=len(set(manifest.patients())),
        min_cases=min_cases,
        resamples=resamples,
        seed=seed,
        seconds=time.perf_counter() - start,
        task_a_rows=tuple(-1 if np.isnan(v) else int(v) for v in right_a),
    )
    log.info("%s on %s: %.1f s", model.name, manifest.name, result.seconds)
    return result


@dataclass(frozen=True)
class PairedDifference:
    """Task A of one model minus another's on the same rows and texts, patients resampled."""

    model: str
    baseline: str
    difference: float
    ci: tuple[float, float]
    rows: int

    def as_dict(self) -> dict:
        return asdict(self)


def task_a_difference(
    result: ManifestBenchmarkResult,
    baseline: ManifestBenchmarkResult,
    patients: Sequence[str],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> PairedDifference:
    """The paired bootstrap interval of ``result.task_a - baseline.task_a``.

    Both runs must be of the same manifest with the same seed (so the same negated texts); a
    resample draws patients once and scores both models on them, which is narrower and more
    honest than comparing the two separate intervals.

    Raises:
        ValueError: the runs are not of the same rows and texts.
    """
    a, b = np.asarray(result.task_a_rows, float), np.asarray(baseline.task_a_rows, float)
    if (
        len(a) != len(patients)
        or a.shape != b.shape
        or result.manifest != baseline.manifest
        or result.seed != baseline.seed
        or not np.array_equal(a < 0, b < 0)
    ):
        raise ValueError("task A can be paired only across runs of the same rows, texts and seed")
    a[a < 0], b[b < 0] = np.nan, np.nan

    def diff(idx: np.ndarray) -> float:
        x, y = a[idx], b[idx]
        return float(np.nanmean(x) - np.nanmean(y)) if np.isfinite(x).any() else np.nan

    ci = bootstrap_by_patient(patients, diff, resamples, seed)
    return PairedDifference(
        model=result.model,
        baseline=baseline.model,
        difference=diff(np.arange(len(a))),
        ci=(float(ci[0]), float(ci[1])),
        rows=int(np.isfinite(a).sum()),
    )


def format_manifest_table(results: Sequence[ManifestBenchmarkResult]) -> str:
    """A markdown table: one column per model, 95 % patient-bootstrap intervals in brackets."""
    if not results:
        return ""
    head = "| metric | " + " | ".join(r.model for r in results) + " |"
    sep = "|---|" + "---|" * len(results)

    def fig(v: float, ci: tuple[float, float] | None = None) -> str:
        if v != v:
            return "n/a"
        if ci is None:
            return f"{v:.3f}"
        return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    first = results[0]
    lines = [
        head,
        sep,
        "| images (patients; rows skipped) | "
        + " | ".join(f"{r.images} ({r.patients}; {r.problems})" for r in results)
        + " |",
        "| zero-shot AUC, mean | "
        + " | ".join(fig(r.mean_auc, r.mean_auc_ci) for r in results)
        + " |",
    ]
    findings = list(dict.fromkeys(f for r in results for f in r.auc))
    for f in findings:
        pos, neg = first.cases.get(f, (0, 0))
        lines.append(
            f"| AUC {f} ({pos}+ / {neg}-) | "
            + " | ".join(fig(r.auc[f], r.auc_ci[f]) if f in r.auc else "-" for r in results)
            + " |"
        )
    left_out = [f for f, c in first.cases.items() if f not in first.auc]
    sources = ", ".join(f"{n} {s}" for s, n in first.task_a_sources.items()) or "none"
    lines += [
        f"| task A (true vs negated; {first.task_a_n} films: {sources}) | "
        + " | ".join(fig(r.task_a, r.task_a_ci) for r in results)
        + " |",
        "| task B (true vs negated vs omitted) | "
        + " | ".join(fig(r.task_b, r.task_b_ci) for r in results)
        + " |",
    ]
    methods = list(
        dict.fromkeys(m for r in results for m in (*r.pointing, *r.pointing_unavailable))
    )
    for m in methods:
        lines.append(
            f"| pointing game, {m} ({first.pointing_n} boxes, peak inside the box) | "
            + " | ".join(fig(r.pointing.get(m, float("nan"))) for r in results)
            + " |"
        )
        for key, name in (
            ("relevance_mass", "relevance mass, {m} (share of the map's mass inside the box)"),
            ("relevance_rank", "relevance rank, {m} (share of its box-sized top inside the box)"),
        ):
            lines.append(
                f"| {name.format(m=m)} | "
                + " | ".join(fig(getattr(r, key).get(m, float("nan"))) for r in results)
                + " |"
            )
    text = "\n".join(lines)
    if left_out:
        text += (
            f"\n\nLeft out (fewer than {first.min_cases} positive or negative films): "
            + ", ".join(f"{f} ({first.cases[f][0]}+ / {first.cases[f][1]}-)" for f in left_out)
        )
    for r in results:
        if r.task_texts_truncated:
            text += (
                f"\n\n{r.model} reads at most {r.text_limit} tokens: {r.task_texts_truncated} "
                "task texts were cut before they were embedded (a negated finding past the cut "
                "is invisible to it)."
            )
    return text


__all__ = [
    "MIN_CASES",
    "RESAMPLES",
    "ManifestBenchmarkResult",
    "PairedDifference",
    "RowTexts",
    "embed_rows",
    "format_manifest_table",
    "prompt_name",
    "row_texts",
    "run_manifest_benchmark",
    "task_a_difference",
]

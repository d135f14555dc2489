"""Negation benchmark on a held-out phantom set (CXR-Align style, after Ko & Park 2025).

For every held-out phantom (seeds from :data:`~explorer.phantom.splits.HELDOUT_SEED`, never
used in training):

* **Task A**: image vs {true report, the same report with one present finding negated}:
  accuracy of ranking the true report first (images with at least one present finding).
* **Task B**: {true, negated, omitted (that finding's sentences removed)}: accuracy of true first.
* **Zero-shot AUC** per phantom finding: the softmax over the (affirmed, negated) prompt pair,
  averaged over the prompt templates, scored against the ground truth; and their mean.
* **Retrieval** image -> report R@1/5/10 over all held-out reports. A hit is a retrieved report
  whose text equals the true report's text (normal studies often share identical wording).

The **pointing game** (:func:`run_pointing_game`) asks whether each attribution method's map
peaks inside a localised finding's mask. Pair probabilities come from
:func:`explorer.scoring.pair_probability`, every figure from :mod:`explorer.eval.metrics`.

:func:`hard_negative_scores` (tasks A and B from the texts) and :func:`zero_shot_probabilities`
(the pair softmax per finding and template) are shared with the benchmark on real films
(:mod:`explorer.eval.real_benchmark`).

Not to be confused with the speed bench (:mod:`explorer.ops.speed`, ``python -m explorer
bench``) or the phantom renderer's render timing (:func:`explorer.phantom.render_timing`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from explorer.eval.metrics import (
    auc_score,
    mean_or_nan,
    perfect_grid_map,
    pointing_hit,
    recall_at_k,
    relevance_mass,
    relevance_rank,
)
from explorer.models.base import VisionLanguageModel
from explorer.phantom import PHANTOM_FINDINGS
from explorer.phantom.sets import (
    PhantomSet,
    build_phantom_set,
    flip_finding,
    join_sentences,
    zero_shot_phrase,
)
from explorer.phantom.splits import HELDOUT_SEED
from explorer.scoring import embed_texts_once, pair_probability
from explorer.vocab.prompts import PromptPair

log = logging.getLogger(__name__)

HELDOUT_IMAGES = 2000
RENDER_SIZE = 160


@dataclass(frozen=True)
class BenchmarkResult:
    """Figures of one model on one held-out set."""

    model: str
    images: int
    task_a: float
    task_a_n: int
    task_a_by_finding: dict[str, float]  # task A accuracy grouped by the negated finding
    task_b: float
    task_b_n: int
    auc: dict[str, float]
    mean_auc: float
    recall: dict[str, float]
    #: Mean zero-shot AUC over findings when each prompt template is used alone.
    auc_by_template: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _embed_images(model: VisionLanguageModel, data: PhantomSet, batch: int = 64) -> torch.Tensor:
    out = []
    for k in range(0, len(data), batch):
        out.append(
            model.embed_image(data.pixels(np.arange(k, min(k + batch, len(data))))).float().cpu()
        )
    return torch.cat(out)


def hard_negative_texts(
    data: PhantomSet,
) -> tuple[list[str], list[str | None], list[str | None], list[str | None]]:
    """Per image: true report, report with one present finding negated, with it omitted, and
    which finding that was (None for an image without a finding to negate)."""
    true, negated, omitted, which = [], [], [], []
    for k, report in enumerate(data.reports):
        true.append(report.text)
        rng = np.random.default_rng(data.seeds[k])
        present = [f for f in PHANTOM_FINDINGS if data.truth[k, PHANTOM_FINDINGS.index(f)] > 0]
        rng.shuffle(present)
        neg = omit = chosen = None
        for finding in present:
            flipped = flip_finding(report.sentences, finding)
            if flipped is not None and join_sentences(flipped) != report.text:
                neg = join_sentences(flipped)
                omit = report.without(finding).text
                chosen = finding
                break
        negated.append(neg)
        omitted.append(omit)
        which.append(chosen)
    return true, negated, omitted, which


@dataclass(frozen=True)
class HardNegativeScores:
    """Tasks A and B on the rows that have a hard negative (shared by both benchmarks).

    Attributes:
        rows: Indices of the rows with a negated text, in order.
        right_a: Per such row, whether the true report scores above the negated one.
        right_b: ...and above the omitted one too (rows without an omitted text: task A only).
    """

    rows: np.ndarray
    right_a: np.ndarray
    right_b: np.ndarray

    @property
    def task_a(self) -> float:
        """Task A accuracy (NaN without rows)."""
        return float(self.right_a.mean()) if len(self.rows) else float("nan")

    @property
    def task_b(self) -> float:
        """Task B accuracy (NaN without rows)."""
        return float(self.right_b.mean()) if len(self.rows) else float("nan")


def hard_negative_scores(
    model: VisionLanguageModel,
    images: torch.Tensor,
    true: torch.Tensor,
    negated: Sequence[str | None],
    omitted: Sequence[str | None],
) -> HardNegativeScores:
    """Score each image against its true report, its negated twin and its omitted twin.

    Args:
        model: The model (its text encoder embeds the twins).
        images: Normalised image embeddings ``[N, D]``.
        true: Normalised embeddings of the true reports ``[N, D]``.
        negated: Per image, the report with one present finding negated (None: no task row).
        omitted: Per image, the report with that finding's sentences dropped; a task row
            without one counts for task B by task A alone.

    Returns:
        Per task row, whether the true report won (task A) and won against both (task B).
    """
    has = [k for k, t in enumerate(negated) if t is not None]
    if not has:
        empty = np.zeros(0, dtype=bool)
        return HardNegativeScores(np.zeros(0, dtype=int), empty, empty)
    s_true = (images[has] * true[has]).sum(-1)
    s_neg = (images[has] * embed_texts_once(model, [negated[k] for k in has])).sum(-1)
    right_a = (s_true > s_neg).numpy()
    with_omit = [i for i, k in enumerate(has) if omitted[k] is not None]
    beats_omit = np.ones(len(has), dtype=bool)
    if with_omit:
        t_omit = embed_texts_once(model, [omitted[has[i]] for i in with_omit])
        s_omit = (images[[has[i] for i in with_omit]] * t_omit).sum(-1)
        beats_omit[with_omit] = (s_true[with_omit] > s_omit).numpy()
    return HardNegativeScores(np.asarray(has), right_a, right_a & beats_omit)


def zero_shot_probabilities(
    model: VisionLanguageModel, images: torch.Tensor, findings: Sequence[str]
) -> list[tuple[tuple[PromptPair, ...], np.ndarray]]:
    """P(affirmed) of each image for each finding and prompt template (the zero-shot AUC's score).

    The softmax over each (affirmed, negated) prompt pair, scaled by the model's logit scale
    (:func:`explorer.scoring.pair_probability`), with the prompts of
    :func:`explorer.vocab.prompts.prompt_pairs` over every template, as
    :func:`explorer.scoring.score_findings` scores one image; the mean over templates is the
    score.

    Args:
        model: The model.
        images: Normalised image embeddings ``[N, D]``.
        findings: CheXpert names or phrases to prompt with.

    Returns:
        Per finding, its prompt pairs and ``[N, templates]`` probabilities.
    """
    from explorer.vocab.prompts import prompt_pairs

    out = []
    for finding in findings:
        pairs = prompt_pairs(finding)
        aff = embed_texts_once(model, [p.affirmed for p in pairs])
        neg = embed_texts_once(model, [p.negated for p in pairs])
        sims = torch.stack([images @ aff.T, images @ neg.T], dim=-1)  # [N, templates, 2]
        out.append((pairs, pair_probability(sims, model.logit_scale).numpy()))
    return out


def run_benchmark(
    model: VisionLanguageModel, images: int = HELDOUT_IMAGES, size: int = RENDER_SIZE
) -> BenchmarkResult:
    """Score ``model`` on the held-out phantom set (rendered once, then cached)."""
    data = build_phantom_set(images, HELDOUT_SEED, size)
    img = _embed_images(model, data)
    true, negated, omitted, which = hard_negative_texts(data)
    t_true = embed_texts_once(model, true)
    tasks = hard_negative_scores(model, img, t_true, negated, omitted)
    negated_finding = np.array([which[k] for k in tasks.rows], dtype=object)
    by_finding = {
        f: float(tasks.right_a[negated_finding == f].mean())
        for f in PHANTOM_FINDINGS
        if (negated_finding == f).any()
    }

    aucs, by_template = {}, {}
    phrases = [zero_shot_phrase(f) for f in PHANTOM_FINDINGS]
    for j, (finding, (pairs, prob)) in enumerate(
        zip(PHANTOM_FINDINGS, zero_shot_probabilities(model, img, phrases), strict=True)
    ):
        present = data.truth[:, j] > 0
        aucs[finding] = auc_score(present, prob.mean(axis=1))
        for t, pair in enumerate(pairs):
            by_template.setdefault(pair.template_id, []).append(auc_score(present, prob[:, t]))

    sims = img @ t_true.T
    top = sims.topk(10, dim=1).indices.numpy()
    texts = np.array(true, dtype=object)
    recall = recall_at_k(texts[top] == texts[:, None], (1, 5, 10))
    valid = [v for v in aucs.values() if not np.isnan(v)]
    return BenchmarkResult(
        model=model.name,
        images=len(data),
        task_a=tasks.task_a,
        task_a_n=len(tasks.rows),
        task_a_by_finding=by_finding,
        task_b=tasks.task_b,
        task_b_n=len(tasks.rows),
        auc=aucs,
        mean_auc=float(np.mean(valid)) if valid else float("nan"),
        recall=recall,
        auc_by_template={t: float(np.nanmean(v)) for t, v in by_template.items()},
    )


def format_table(results: Sequence[BenchmarkResult]) -> str:
    """A markdown table: one column per model."""
    head = "| metric | " + " | ".join(r.model for r in results) + " |"
    sep = "|---|" + "---|" * len(results)
    rows = [
        ("task A (true vs negated)", [r.task_a for r in results]),
        *[
            (f"task A, {f} negated", [r.task_a_by_finding.get(f, float("nan")) for r in results])
            for f in PHANTOM_FINDINGS
        ],
        ("task B (true vs negated vs omitted)", [r.task_b for r in results]),
        ("zero-shot AUC, mean", [r.mean_auc for r in results]),
        *[(f"AUC {f}", [r.auc.get(f, float("nan")) for r in results]) for f in PHANTOM_FINDINGS],
        *[
            (
                f"mean AUC, template {t!r} alone",
                [r.auc_by_template.get(t, float("nan")) for r in results],
            )
            for t in dict.fromkeys(t for r in results for t in r.auc_by_template)
        ],
        *[(f"retrieval {k}", [r.recall[k] for r in results]) for k in ("R@1", "R@5", "R@10")],
    ]
    lines = [head, sep] + [
        f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |" for name, vals in rows
    ]
    return "\n".join(lines)


# --- pointing game ------------------------------------------------------------------------------

POINTING_METHODS = ("ig", "gradcam", "occlusion", "attention", "cells")
#: Text methods whose randomisation check the pointing game also reports.
WORD_METHODS = ("layer_ig", "text_attention")


def methods_for(
    model: VisionLanguageModel, methods: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """The image methods ``model`` can run, and why each other one cannot (attention needs a
    transformer image tower, cell shares a cell-pooled one)."""
    from explorer.attribution.image import why_no_image_map

    usable, unavailable = [], {}
    for method in methods:
        why = why_no_image_map(model, method)
        if why is None:
            usable.append(method)
        else:
            unavailable[method] = why
    return usable, unavailable


#: A finding counts as localised when its mask covers less than this share of the image.
LOCALISED_MAX_AREA = 0.3


@dataclass(frozen=True)
class PointingResult:
    """Share of present localised findings whose attribution peak lies in the dilated mask."""

    model: str
    images: int
    findings: int
    dilate_px: int
    hits: dict[str, float]  # method -> hit rate over all localised findings
    per_finding: dict[str, dict[str, float]]  # method -> finding -> hit rate
    params: dict[str, dict]
    #: Hit rate of a perfect map at Grad-CAM's grid (each cell = the share of it the mask
    #: covers, resized like a Grad-CAM map): the most a map of that resolution could score.
    gradcam_ceiling: float = float("nan")
    #: How many of the findings the model affirms (P(affirmed) >= 0.5 over the "there is X" /
    #: "no X" pair), and each method's hit rate over those and over the rest: a map can hardly
    #: point at a sign the model does not see.
    affirmed: int = 0
    hits_affirmed: dict[str, float] = field(default_factory=dict)
    hits_missed: dict[str, float] = field(default_factory=dict)
    #: Method -> mean relevance mass / rank accuracy over the localised findings
    #: (:func:`~explorer.eval.metrics.relevance_mass`, :func:`~explorer.eval.metrics.relevance_rank`).
    relevance_mass: dict[str, float] = field(default_factory=dict)
    relevance_rank: dict[str, float] = field(default_factory=dict)
    #: Method -> the trust checks (:mod:`explorer.attribution.checks`) averaged over the first
    #: ``trust_n`` localised findings: ``randomisation_rho``, ``deletion``, ``deletion_random``,
    #: ``insertion``, ``insertion_random``.
    trust: dict[str, dict[str, float]] = field(default_factory=dict)
    trust_n: int = 0
    #: Text method -> mean Spearman correlation of the affirmed prompt's word scores before and
    #: after randomising the top half of the text tower (same findings as ``trust``).
    word_randomisation: dict[str, float] = field(default_factory=dict)
    #: Method -> why the model cannot run it (attention on a convolutional image tower).
    unavailable: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def run_pointing_game(
    model: VisionLanguageModel,
    images: int = 200,
    size: int = RENDER_SIZE,
    methods: Sequence[str] = POINTING_METHODS,
    dilate_px: int = 3,
    steps: int = 32,
    trust_samples: int = 8,
) -> PointingResult:
    """Pointing game on the first ``images`` held-out phantoms, affirmed prompt "there is X",
    with relevance mass and rank accuracy on every localised finding and the trust checks
    (randomisation, deletion / insertion) on the first ``trust_samples`` of them."""
    from explorer.attribution import attribute_image
    from explorer.attribution.checks import trust_report, word_randomisation_rho
    from explorer.vocab.prompts import prompt_pair

    methods, unavailable = methods_for(model, methods)
    words: dict[str, list[float]] = {m: [] for m in WORD_METHODS}
    data = build_phantom_set(images, HELDOUT_SEED, size, keep_masks=True)
    hits: dict[str, dict[str, list[bool]]] = {m: {} for m in methods}
    seen: dict[str, list[bool]] = {m: [] for m in methods}  # hits where the model affirms
    unseen: dict[str, list[bool]] = {m: [] for m in methods}
    ceiling: list[bool] = []
    mass: dict[str, list[float]] = {m: [] for m in methods}
    rank: dict[str, list[float]] = {m: [] for m in methods}
    checks: dict[str, list] = {m: [] for m in methods}
    params: dict[str, dict] = {}
    texts: dict[str, torch.Tensor] = {}  # finding -> its (affirmed, negated) embeddings
    count = affirmed = 0
    for k in range(len(data)):
        pixels = data.pixels([k])[0]
        image = model.embed_image(pixels).float().reshape(-1)
        for finding, mask in data.masks[k].items():
            if mask.mean() >= LOCALISED_MAX_AREA or not mask.any():
                continue
            count += 1
            pair = prompt_pair(zero_shot_phrase(finding), "there_is")
            if finding not in texts:
                texts[finding] = model.embed_texts([pair.affirmed, pair.negated]).float()
            affirms = bool(pair_probability(texts[finding] @ image, model.logit_scale) >= 0.5)
            affirmed += affirms
            if count <= trust_samples:
                for method in WORD_METHODS:
                    rho = word_randomisation_rho(model, pixels, pair.affirmed, method)
                    words[method].append(rho)
            for method in methods:
                kwargs = {"steps": steps} if method == "ig" else {}
                attr = attribute_image(model, pixels, pair.affirmed, method, **kwargs)
                params.setdefault(method, dict(attr.params))
                hit = pointing_hit(attr.attribution, mask, dilate_px)
                hits[method].setdefault(finding, []).append(hit)
                (seen if affirms else unseen)[method].append(hit)
                mass[method].append(relevance_mass(attr.attribution, mask))
                rank[method].append(relevance_rank(attr.attribution, mask))
                if count <= trust_samples:
                    report = trust_report(
                        model, pixels, pair.affirmed, method, attribution=attr, **kwargs
                    )
                    checks[method].append(report)
                if method == "gradcam":
                    best = perfect_grid_map(mask, tuple(attr.params["grid"]))
                    ceiling.append(pointing_hit(best, mask, dilate_px))
    rate = {m: mean_or_nan([h for v in hits[m].values() for h in v]) for m in methods}
    per = {m: {f: float(np.mean(v)) for f, v in hits[m].items()} for m in methods}
    return PointingResult(
        model.name,
        len(data),
        count,
        dilate_px,
        rate,
        per,
        params,
        mean_or_nan(ceiling),
        affirmed=affirmed,
        hits_affirmed={m: mean_or_nan(v) for m, v in seen.items()},
        hits_missed={m: mean_or_nan(v) for m, v in unseen.items()},
        relevance_mass={m: mean_or_nan([v for v in mass[m] if v == v]) for m in methods},
        relevance_rank={m: mean_or_nan([v for v in rank[m] if v == v]) for m in methods},
        trust={m: _mean_trust(checks[m]) for m in methods},
        trust_n=min(count, trust_samples),
        word_randomisation={m: mean_or_nan(v) for m, v in words.items()},
        unavailable=unavailable,
    )


#: The trust checks' figures, as named in :attr:`PointingResult.trust`.
TRUST_FIGURES = {
    "randomisation_rho": "randomisation_rho",
    "deletion": "deletion_auc",
    "deletion_random": "deletion_random_auc",
    "insertion": "insertion_auc",
    "insertion_random": "insertion_random_auc",
}


def _mean_trust(reports: Sequence) -> dict[str, float]:
    return {
        key: mean_or_nan([getattr(r, attr) for r in reports]) for key, attr in TRUST_FIGURES.items()
    }


def format_pointing(results: Sequence[PointingResult]) -> str:
    """Markdown table: pointing-game hit rate per method (rows) and model (columns)."""
    head = "| pointing game (hit rate) | " + " | ".join(r.model for r in results) + " |"
    sep = "|---|" + "---|" * len(results)
    methods = list(dict.fromkeys(m for r in results for m in r.hits))
    nan = float("nan")

    def row(name: str, values: Sequence[float]) -> str:
        return f"| {name} | " + " | ".join("n/a" if v != v else f"{v:.3f}" for v in values) + " |"

    methods += [m for r in results for m in r.unavailable if m not in methods]
    rows = [row(m, [r.hits.get(m, nan) for r in results]) for m in methods]
    rows.append(
        "| localised findings (of which the model affirms) | "
        + " | ".join(f"{r.findings} ({r.affirmed})" for r in results)
        + " |"
    )
    for m in methods:
        rows.append(row(f"{m}, relevance mass", [r.relevance_mass.get(m, nan) for r in results]))
        rows.append(row(f"{m}, relevance rank", [r.relevance_rank.get(m, nan) for r in results]))
        for key in TRUST_FIGURES:
            label = f"{m}, {key.replace('_', ' ')} (first {results[0].trust_n} findings)"
            rows.append(row(label, [r.trust.get(m, {}).get(key, nan) for r in results]))
    for m in WORD_METHODS:
        label = f"words, {m}, randomisation rho (first {results[0].trust_n} findings)"
        rows.append(row(label, [r.word_randomisation.get(m, nan) for r in results]))
    for m in methods:
        rows.append(
            row(f"{m}, findings the model affirms", [r.hits_affirmed.get(m, nan) for r in results])
        )
        rows.append(row(f"{m}, findings it misses", [r.hits_missed.get(m, nan) for r in results]))
    if "gradcam" in methods:
        grids = {
            "x".join(map(str, r.params["gradcam"]["grid"]))
            for r in results
            if "gradcam" in r.params
        }
        rows.append(
            f"| perfect map at Grad-CAM's {'/'.join(sorted(grids))} grid (ceiling) | "
            + " | ".join(f"{r.gradcam_ceiling:.3f}" for r in results)
            + " |"
        )
    why = {
        f"n/a, {m} on {r.model}: {reason}" for r in results for m, reason in r.unavailable.items()
    }
    return "\n".join([head, sep, *rows, *(["", *sorted(why)] if why else [])])

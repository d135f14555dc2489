"""Affirmed vs negated findings: how an image's embedding weighs "there is X" against "no X".

For each finding and prompt template the image is compared with the affirmed and the negated
prompt; the softmax over that pair (scaled by the model's logit scale, as in CheXzero,
Tiu et al. 2022) gives the model's probability that the affirmed statement is the true one.
Results are averaged over the chosen templates.

A row is flagged **negation-blind** when the model barely separates the two statements:
its pair probability is within ``blind_margin`` of 0.5, or the two prompts' text embeddings
are nearly the same vector (cosine >= ``blind_text_cosine``), so whatever the image shows, the
model cannot say which statement it supports.

Text embeddings of prompts are cached per model, so scoring a new image costs one image
forward pass once the prompts have been seen.

Two helpers are the one home of what the evaluation and the report map share with scoring:
:func:`pair_probability` (the pair softmax) and :func:`embed_texts_once` (text embedding with
repeated texts embedded once).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from explorer.models.base import VisionLanguageModel
from explorer.progress import Progress
from explorer.vocab.labels import CHEXPERT_FINDINGS
from explorer.vocab.prompts import PromptPair, PromptTemplate, prompt_pairs

log = logging.getLogger(__name__)

BLIND_MARGIN = 0.05
BLIND_TEXT_COSINE = 0.98


@dataclass(frozen=True)
class FindingScore:
    """One finding on one image.

    Attributes:
        finding: CheXpert name or the user's free text.
        affirmed: The affirmed prompts used (one per template).
        negated: The negated prompts used, aligned with ``affirmed``.
        sim_affirmed: Mean cosine similarity of the image with the affirmed prompts.
        sim_negated: Mean cosine similarity with the negated prompts.
        prob_affirmed: Mean softmax probability of the affirmed prompt within each pair.
        margin: ``sim_affirmed - sim_negated``.
        text_cosine: Mean cosine between each affirmed prompt and its negation (1 = the model
            sees no difference between the two sentences).
        negation_blind: The model barely separates the two (see the module docstring).
        custom: The finding was typed by the user rather than one of the 14 CheXpert labels.
        own_negation: The negated prompts are the user's own sentence (``negations``), not the
            templates' or the engine's.
        truncated: A prompt of this finding (typed text or the user's negation) is longer than
            the model's text tower reads, so it was cut before it was embedded.
    """

    finding: str
    affirmed: tuple[str, ...]
    negated: tuple[str, ...]
    sim_affirmed: float
    sim_negated: float
    prob_affirmed: float
    margin: float
    text_cosine: float
    negation_blind: bool
    custom: bool = False
    own_negation: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class FindingsResult:
    """All findings for one image and one model."""

    model: str
    scores: tuple[FindingScore, ...]
    templates: tuple[str, ...]
    logit_scale: float

    def to_frame(self):
        """A pandas DataFrame, one row per finding (prompts joined with ' | ')."""
        import pandas as pd

        rows = [
            {
                "finding": s.finding,
                "P(affirmed)": round(s.prob_affirmed, 4),
                "sim affirmed": round(s.sim_affirmed, 4),
                "sim negated": round(s.sim_negated, 4),
                "margin": round(s.margin, 4),
                "text cosine": round(s.text_cosine, 4),
                "negation-blind": s.negation_blind,
                "affirmed prompts": " | ".join(s.affirmed),
                "negated prompts": " | ".join(s.negated),
                "custom": s.custom,
                "your negation": s.own_negation,
                "cut to the model's length": s.truncated,
            }
            for s in self.scores
        ]
        return pd.DataFrame(rows)

    def score(self, finding: str) -> FindingScore:
        for s in self.scores:
            if s.finding == finding:
                return s
        raise KeyError(finding)


def pair_probability(sims: torch.Tensor, scale: float) -> torch.Tensor:
    """P(affirmed) within each (affirmed, negated) prompt pair.

    The softmax over the pair's two similarities, each times the model's logit scale (as in
    CheXzero); the affirmed prompt's share. ``P >= 0.5`` exactly when the affirmed similarity is
    at least the negated one.

    Args:
        sims: ``[..., 2]`` similarities of an image with each pair, affirmed prompt first.
        scale: The model's logit scale (:attr:`VisionLanguageModel.logit_scale`).

    Returns:
        ``[...]`` probabilities (the leading shape of ``sims``).
    """
    return torch.softmax(scale * sims, dim=-1)[..., 0]


def embed_texts_once(
    model: VisionLanguageModel,
    texts: Sequence[str],
    batch: int = 128,
    by_length: bool = False,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Text embeddings of ``texts`` (float32, on the CPU), each distinct text embedded once.

    Corpora and prompt sets repeat themselves ("No acute cardiopulmonary abnormality."), so
    the distinct texts are embedded in batches of ``batch`` and the rows repeated to match.

    Args:
        model: A loaded model.
        texts: Texts, repeats allowed.
        batch: Texts per forward pass.
        by_length: Embed the distinct texts shortest first (equal lengths in code-point order),
            so each batch pads less; otherwise in order of first appearance.
        progress: Called after each batch with the share of distinct texts embedded.

    Returns:
        ``[len(texts), D]``, row ``i`` the embedding of ``texts[i]`` (``[0]`` for no texts).
    """
    unique = list(dict.fromkeys(texts))
    if not unique:
        return torch.empty(0)
    if by_length:
        unique.sort(key=lambda t: (len(t), t))
    rows = []
    for k in range(0, len(unique), batch):
        rows.append(model.embed_texts(unique[k : k + batch]).float().cpu())
        if progress:
            progress(min(1.0, (k + batch) / len(unique)), "embedding texts")
    emb = torch.cat(rows)
    where = {t: i for i, t in enumerate(unique)}
    return emb[[where[t] for t in texts]]


class TextEmbeddingCache:
    """Normalised text embeddings per (model, text), least recently used evicted first."""

    def __init__(self, max_items: int = 20000) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def embed(
        self, model: VisionLanguageModel, texts: Sequence[str], batch: int = 64
    ) -> torch.Tensor:
        key_model = id(model)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if (key_model, t) not in self._items))
        if missing:
            emb = embed_texts_once(model, missing, batch)
            with self._lock:
                for t, e in zip(missing, emb, strict=True):
                    self._items[(key_model, t)] = e
        with self._lock:
            out = []
            for t in texts:
                self._items.move_to_end((key_model, t))
                out.append(self._items[(key_model, t)])
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return torch.stack(out) if out else torch.empty(0)

    def __len__(self) -> int:
        return len(self._items)


#: Process-wide cache used by :func:`score_findings` unless another is given.
TEXT_CACHE = TextEmbeddingCache()


@lru_cache(maxsize=256)
def _pairs(
    findings: tuple[str, ...], templates: tuple | None, negations: tuple[tuple[str, str], ...]
) -> dict[str, tuple[PromptPair, ...]]:
    """:func:`build_pairs`, memoised: a query with the same prompts skips the negation engine.

    Callers must not mutate the returned dict (``score_findings`` only reads it).
    """
    return build_pairs(findings, templates, dict(negations))


def build_pairs(
    findings: Iterable[str],
    templates: Sequence[str | PromptTemplate] | None = None,
    negations: Mapping[str, str] | None = None,
) -> dict[str, tuple[PromptPair, ...]]:
    """Prompt pairs per finding; ``negations`` overrides the negated prompt of a finding.

    An override is one sentence the user wrote; it replaces the negated prompt of every
    template for that finding (the affirmed prompts stay as the templates make them).
    """
    out = {}
    for finding in findings:
        pairs = prompt_pairs(finding, templates)
        override = own_negation(negations, finding)
        if override:
            pairs = tuple(PromptPair(p.finding, p.affirmed, override, p.template_id) for p in pairs)
        out[finding] = pairs
    return out


def own_negation(negations: Mapping[str, str] | None, finding: str) -> str:
    """The user's own negated sentence for ``finding`` ("" when there is none)."""
    return ((negations or {}).get(finding) or "").strip()


def score_findings(
    model: VisionLanguageModel,
    pixels: np.ndarray | torch.Tensor,
    findings: Sequence[str] = CHEXPERT_FINDINGS,
    custom: Sequence[str] = (),
    templates: Sequence[str | PromptTemplate] | None = None,
    negations: Mapping[str, str] | None = None,
    blind_margin: float = BLIND_MARGIN,
    blind_text_cosine: float = BLIND_TEXT_COSINE,
    cache: TextEmbeddingCache | None = None,
    image_embedding: torch.Tensor | None = None,
) -> FindingsResult:
    """Score every finding's affirmed vs negated prompts against one image.

    Args:
        model: A loaded model.
        pixels: Grayscale image ``[H, W]`` in [0, 1] (ignored if ``image_embedding`` given).
        findings: CheXpert findings to score (default: all 14).
        custom: Free-text findings typed by the user (negated by the negation engine).
        templates: Template ids or templates to average over (default: all).
        negations: Optional user-edited negated prompt per finding.
        blind_margin: Flag a row when ``|P(affirmed) - 0.5| < blind_margin``.
        blind_text_cosine: ...or when the two prompts' embeddings have at least this cosine.
        cache: Text-embedding cache (default: the process-wide one).
        image_embedding: A precomputed normalised image embedding ``[1, D]`` or ``[D]``.

    Raises:
        explorer.vocab.negation.NegationError: a custom finding cannot be negated automatically.
    """
    cache = TEXT_CACHE if cache is None else cache
    all_findings = tuple(dict.fromkeys([*findings, *custom]))
    pairs = _pairs(
        all_findings,
        None if templates is None else tuple(templates),
        tuple(sorted((negations or {}).items())),
    )
    if image_embedding is None:
        with torch.inference_mode():
            image_embedding = model.embed_image(pixels)
    img = image_embedding.float().cpu().reshape(-1)
    scale = model.logit_scale
    texts = [t for ps in pairs.values() for p in ps for t in (p.affirmed, p.negated)]
    # All pairs at once: [P, 2] similarities, the pairwise softmax and the prompts' cosine.
    block = cache.embed(model, texts).reshape(-1, 2, img.shape[0])
    sims = block @ img
    probs = pair_probability(sims, scale)
    text_cos = (block[:, 0] * block[:, 1]).sum(-1)
    per_pair = torch.stack([sims[:, 0], sims[:, 1], probs, text_cos], dim=1).numpy()
    # Typed text and the user's negations may be longer than the text tower reads; the 14
    # findings' template prompts are short (not tokenised again on every query).
    typed = [f for f in pairs if f not in findings or own_negation(negations, f)]
    typed_texts = [t for f in typed for p in pairs[f] for t in (p.affirmed, p.negated)]
    cut_texts = {t for t, c in zip(typed_texts, model.truncated(typed_texts), strict=True) if c}
    scores, k = [], 0
    for finding, ps in pairs.items():
        n = len(ps)
        s_aff, s_neg, p, tc = (float(v) for v in per_pair[k : k + n].mean(axis=0))
        k += n
        scores.append(
            FindingScore(
                finding=finding,
                affirmed=tuple(x.affirmed for x in ps),
                negated=tuple(x.negated for x in ps),
                sim_affirmed=s_aff,
                sim_negated=s_neg,
                prob_affirmed=p,
                margin=s_aff - s_neg,
                text_cosine=tc,
                negation_blind=abs(p - 0.5) < blind_margin or tc >= blind_text_cosine,
                custom=finding not in findings,
                own_negation=bool(own_negation(negations, finding)),
                truncated=any(x.affirmed in cut_texts or x.negated in cut_texts for x in ps),
            )
        )
    used = tuple(dict.fromkeys(p.template_id for ps in pairs.values() for p in ps))
    return FindingsResult(model=model.name, scores=tuple(scores), templates=used, logit_scale=scale)

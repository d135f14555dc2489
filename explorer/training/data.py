"""Phantom (image, report) pairs for training and evaluation.

A :class:`PhantomSet` holds rendered images (uint8), each image's ground truth over
:data:`PHANTOM_FINDINGS` (+1 present, -1 absent) and its generated report. Sets are cached on
disk keyed by (size, count, base seed, renderer version) so the two shipped models and the
benchmark render each set once.

Seeds: phantom ``k`` of a set with base seed ``b`` is rendered from seed ``b + k``. Training
uses :data:`TRAIN_SEED`; the held-out benchmark set uses :data:`HELDOUT_SEED`; the ranges never
overlap for sets under ``SEED_STRIDE`` images.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np

from explorer.paths import cache_dir
from explorer.phantom import PHANTOM_FINDINGS, render_phantom
from explorer.phantom.records import CHEXPERT_MAPPING
from explorer.phantom.reports import NEGATIVE_NOUNS, Report, ReportSentence, generate_report
from explorer.vocab.labels import LABEL_VALUE, NEGATIVE, POSITIVE

log = logging.getLogger(__name__)

TRAIN_SEED = 1_000_000
HELDOUT_SEED = 9_000_000
SEED_STRIDE = 1_000_000

#: How a phantom finding is phrased in the benchmark's zero-shot prompts (default: its own name).
ZERO_SHOT_PHRASES = {"nodule/mass": "lung nodule or mass"}


def zero_shot_phrase(finding: str) -> str:
    """The phrase the benchmark puts into its prompt templates for a phantom finding."""
    return ZERO_SHOT_PHRASES.get(finding, finding)


@dataclass(frozen=True)
class PhantomSet:
    """Rendered phantoms with their truth and reports.

    Attributes:
        images: ``[N, S, S]`` uint8 (display intensities, bone bright).
        truth: ``[N, F]`` float32 over ``PHANTOM_FINDINGS``: +1 present, -1 absent.
        reports: The generated report of each image.
        seeds: The render seed of each image.
        masks: Optional per-image dict finding -> bool mask (kept for evaluation sets).
    """

    images: np.ndarray
    truth: np.ndarray
    reports: tuple[Report, ...]
    seeds: tuple[int, ...]
    masks: tuple[dict[str, np.ndarray], ...] | None = None

    def __len__(self) -> int:
        return len(self.seeds)

    def pixels(self, index: Sequence[int] | np.ndarray) -> np.ndarray:
        """Float32 ``[B, S, S]`` in [0, 1] for the given indices."""
        return self.images[np.asarray(index)].astype(np.float32) / 255.0


def _render_one(args: tuple[int, int, bool]) -> tuple[np.ndarray, np.ndarray, Report, dict | None]:
    seed, size, keep_masks = args
    ph = render_phantom(seed, size=size)
    present = set(ph.names)
    truth = np.array([1.0 if f in present else -1.0 for f in PHANTOM_FINDINGS], dtype=np.float32)
    report = generate_report(ph, seed)
    masks = {f.name: np.packbits(f.mask) for f in ph.findings} if keep_masks else None
    img = np.clip(np.rint(ph.image * 255.0), 0, 255).astype(np.uint8)
    return img, truth, report, masks


def _code_version() -> str:
    import explorer.phantom as ph

    h = hashlib.sha1()
    for mod in sorted(Path(ph.__file__).parent.glob("*.py")):
        h.update(mod.read_bytes())
    h.update(inspect.getsource(_render_one).encode())
    return h.hexdigest()[:10]


def build_phantom_set(
    count: int,
    base_seed: int,
    size: int,
    keep_masks: bool = False,
    workers: int | None = None,
    cache: bool = True,
) -> PhantomSet:
    """Render ``count`` phantoms (in parallel) or read them from the on-disk cache."""
    if count >= SEED_STRIDE:
        raise ValueError(f"at most {SEED_STRIDE - 1} phantoms per set")
    key = f"phantoms-{size}-{count}-{base_seed}-{int(keep_masks)}-{_code_version()}.pkl"
    path = cache_dir() / key
    if cache and path.exists():
        with path.open("rb") as fh:
            return pickle.load(fh)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    jobs = [(base_seed + k, size, keep_masks) for k in range(count)]
    log.info("rendering %d phantoms at %d px with %d workers", count, size, workers)
    if workers > 1 and count > 64:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_render_one, jobs, chunksize=64))
    else:
        rows = [_render_one(j) for j in jobs]
    shape = (size, size)
    masks = None
    if keep_masks:
        masks = tuple(
            {
                k: np.unpackbits(v)[: size * size].reshape(shape).astype(bool)
                for k, v in r[3].items()
            }
            for r in rows
        )
    data = PhantomSet(
        images=np.stack([r[0] for r in rows]),
        truth=np.stack([r[1] for r in rows]),
        reports=tuple(r[2] for r in rows),
        seeds=tuple(j[0] for j in jobs),
        masks=masks,
    )
    if cache:
        cache_dir().mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    return data


# --- texts -------------------------------------------------------------------------------------


def claims_vector(sentences: Sequence[ReportSentence]) -> np.ndarray:
    """What a text asserts, over ``PHANTOM_FINDINGS``: +1 affirmed, -1 denied, +0.5 hedged, 0 silent."""
    v = np.zeros(len(PHANTOM_FINDINGS), dtype=np.float32)
    index = {f: i for i, f in enumerate(PHANTOM_FINDINGS)}
    for s in sentences:
        for f in s.findings:
            if f in index:
                v[index[f]] = LABEL_VALUE[s.status]
    return v


def join_sentences(sentences: Sequence[ReportSentence]) -> str:
    """Sentences -> report text, with section headers when both sections are present."""
    findings = [s.text for s in sentences if s.section == "findings"]
    impression = [s.text for s in sentences if s.section == "impression"]
    if findings and impression:
        return f"FINDINGS: {' '.join(findings)} IMPRESSION: {' '.join(impression)}"
    return " ".join(findings or impression)


def flip_finding(
    sentences: Sequence[ReportSentence], finding: str
) -> tuple[ReportSentence, ...] | None:
    """The sentences with every sentence about ``finding`` negated (or affirmed if negative).

    Returns ``None`` when the negation engine cannot rewrite one of them.
    """
    from explorer.vocab.negation import NegationError, negate

    out = []
    for s in sentences:
        if finding in s.findings:
            try:
                text = negate(s.text)
            except NegationError:
                return None
            s = replace(s, text=text, status=0 if s.status in (1, -1) else 1)
        out.append(s)
    return tuple(out)


@dataclass(frozen=True)
class TextView:
    """One training text for an image, and optionally its polarity-flipped twin."""

    text: str
    claims: np.ndarray
    negated: str | None
    negated_claims: np.ndarray | None
    flipped: str | None  # the finding whose polarity was flipped


def sample_view(
    report: Report, rng: np.random.Generator, p_full: float, with_negative: bool
) -> TextView:
    """A full report (probability ``p_full``) or a short subset of 1-3 of its sentences.

    Short views teach the model the one-sentence statements that zero-shot prompts use. The
    flipped twin prefers a present (or hedged) finding: "the report with a present finding
    negated"; otherwise a denied finding is affirmed.
    """
    sentences = tuple(report.sentences)
    if rng.random() >= p_full and len(sentences) > 1:
        k = int(rng.integers(1, min(3, len(sentences)) + 1))
        positives = [i for i, s in enumerate(sentences) if s.status in (1, -1) and s.findings]
        pick = set(rng.choice(len(sentences), size=k, replace=False).tolist())
        if positives and not pick & set(positives) and rng.random() < 0.7:
            pick.pop()
            pick.add(int(rng.choice(positives)))
        sentences = tuple(s for i, s in enumerate(sentences) if i in pick)
    text = join_sentences(sentences)
    claims = claims_vector(sentences)
    if not with_negative:
        return TextView(text, claims, None, None, None)
    present = [f for s in sentences if s.status in (1, -1) for f in s.findings]
    denied = [f for s in sentences if s.status == 0 for f in s.findings]
    order = list(dict.fromkeys(present)) if present and rng.random() < 0.75 else []
    rest = [f for f in dict.fromkeys(present + denied) if f not in order]
    rng.shuffle(rest)
    for finding in [*order, *rest]:
        flipped = flip_finding(sentences, finding)
        if flipped is not None:
            neg_text = join_sentences(flipped)
            if neg_text != text:
                return TextView(text, claims, neg_text, claims_vector(flipped), finding)
    return TextView(text, claims, None, None, None)


@cache
def finding_prompt_pairs(finding: str, templates: tuple[str, ...] = ()) -> tuple:
    """Every (affirmed, negated) prompt pair that states ``finding`` in a prompt view.

    Phrases: the benchmark's (:func:`zero_shot_phrase`), the app's
    CheXpert phrase for it ("lung lesion", "fracture") and the report generator's noun
    ("pulmonary nodule", "acute rib fracture"), each in every template of ``prompts.json``
    named in ``templates`` (all when empty).
    """
    from explorer.vocab.prompts import prompt_pairs

    phrases = dict.fromkeys(
        [zero_shot_phrase(finding), CHEXPERT_MAPPING[finding], NEGATIVE_NOUNS[finding]]
    )
    phrases.pop("lines or tubes", None)  # "there is lines or tubes": not a sentence
    pairs = [p for phrase in phrases for p in prompt_pairs(phrase, templates or None)]
    return tuple(dict.fromkeys((p.affirmed, p.negated) for p in pairs))


def prompt_view(
    truth: np.ndarray, rng: np.random.Generator, templates: tuple[str, ...] = ()
) -> TextView:
    """A zero-shot style prompt about one finding, true of the image, and its negation as twin.

    Half the time (when the image has any) the finding is a present one and the view affirms
    it ("there is pleural effusion"); otherwise any finding, affirmed if present and denied
    ("there is no rib fracture") if absent. ``truth`` is the image's ground truth (+1/-1 over
    :data:`PHANTOM_FINDINGS`), so a view may state an absent finding its report left unsaid.
    """
    present = np.flatnonzero(truth > 0)
    if len(present) and rng.random() < 0.5:
        j = int(rng.choice(present))
    else:
        j = int(rng.integers(len(PHANTOM_FINDINGS)))
    finding = PHANTOM_FINDINGS[j]
    pairs = finding_prompt_pairs(finding, tuple(templates))
    affirmed, negated = pairs[int(rng.integers(len(pairs)))]
    claims = np.zeros(len(PHANTOM_FINDINGS), dtype=np.float32)
    claims[j] = LABEL_VALUE[POSITIVE if truth[j] > 0 else NEGATIVE]
    if truth[j] > 0:
        return TextView(affirmed, claims, negated, -claims, finding)
    return TextView(negated, claims, affirmed, -claims, finding)

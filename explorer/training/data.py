"""Training texts from phantom reports: sampled report views, prompt views, claim vectors.

The rendered sets themselves (:class:`~explorer.phantom.sets.PhantomSet`,
:func:`~explorer.phantom.sets.build_phantom_set`) and the seed ranges
(:mod:`explorer.phantom.splits`) live in the phantom package, where the evaluation takes them
from too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from explorer.phantom import PHANTOM_FINDINGS
from explorer.phantom.records import CHEXPERT_MAPPING
from explorer.phantom.reports import NEGATIVE_NOUNS, Report, ReportSentence
from explorer.phantom.sets import flip_finding, join_sentences, zero_shot_phrase
from explorer.vocab.labels import LABEL_VALUE, NEGATIVE, POSITIVE

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


@dataclass(frozen=True, eq=False)
class PhantomTraining:
    """A rendered phantom set as the trainer draws batches from it (reports are paired)."""

    data: object  # explorer.phantom.sets.PhantomSet

    def __len__(self) -> int:
        return len(self.data)

    @property
    def truth(self) -> np.ndarray:
        return self.data.truth

    @property
    def masks(self):
        return self.data.masks

    def pixels(self, index) -> np.ndarray:
        return self.data.pixels(index)

    def image_claims(self, index) -> np.ndarray:
        """What each image's own full report asserts (the image side of the similarity)."""
        return np.stack([claims_vector(self.data.reports[i].sentences) for i in index])

    def views(self, index, rng: np.random.Generator, cfg, with_negative: bool) -> list[TextView]:
        """A prompt view (share ``cfg.p_prompt``) or a sampled view of each image's report."""
        return [
            prompt_view(self.data.truth[i], rng, cfg.prompt_templates)
            if rng.random() < cfg.p_prompt
            else sample_view(self.data.reports[i], rng, cfg.p_full_report, with_negative)
            for i in index
        ]

"""A short report written from a film's labels, for films that come without a report.

Real labelled image sets (NIH ChestX-ray14, CheXpert's image labels) often ship labels but no
report text. The negation benchmark still needs a report to negate, so :func:`write_report`
writes one in the style of real reports from the labels alone:

* one affirmed sentence per positive finding, in one of a few real-style phrasings chosen by a
  seeded generator ("Pleural effusion.", "There is pleural effusion.", "Pleural effusion is
  present.", "Findings are consistent with pleural effusion.", "Pleural effusion is noted.");
* one hedged sentence per uncertain finding ("Possible pneumonia.");
* one negated sentence per negative finding ("No pneumothorax.", "There is no pneumothorax.",
  "No evidence of pneumothorax.");
* "No acute cardiopulmonary abnormality." when No Finding is positive (nothing when negative);
* nothing for a blank (not stated) label.

Positive and hedged sentences come first, negatives after, so a text encoder that truncates
long inputs loses negatives before it loses what the film shows. Findings are phrased as the
prompts phrase them (:func:`explorer.vocab.labels.finding_phrase`); a finding outside the 14
CheXpert names (an extra NIH finding such as Emphysema) is phrased by its own name in lower
case. The phantom report generator (:mod:`explorer.phantom.reports`) cannot be used here: it
writes from a phantom's rendered instances (side, severity, size), which a real film's labels
do not have.

:func:`omit_finding` is the benchmark's "omitted" edit for any report text: the sentences that
mention the finding are dropped.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from explorer.vocab.labels import (
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    canonical_finding,
    finding_vocab,
    known_finding,
)

#: The sentence for a normal study (No Finding positive).
NORMAL_SENTENCE = "No acute cardiopulmonary abnormality."
#: Affirmed phrasings; ``{p}`` is the finding's phrase, ``{be}`` "is" / "are".
AFFIRMED_PHRASINGS = (
    "{p}.",
    "There {be} {p}.",
    "{p} {be} present.",
    "Findings are consistent with {p}.",
    "{p} {be} noted.",
)
#: Hedged phrasings (uncertain label).
HEDGED_PHRASINGS = ("Possible {p}.",)
#: Negated phrasings (negative label).
NEGATED_PHRASINGS = ("No {p}.", "There {be} no {p}.", "No evidence of {p}.")


def _phrase(finding: str) -> tuple[str, str]:
    """The finding's phrase and its verb ("is" / "are")."""
    if known_finding(finding) is None:
        return finding.replace("_", " ").lower(), "is"
    vocab = finding_vocab(finding)
    return vocab.phrase, "are" if vocab.plural else "is"


def _sentence(template: str, finding: str) -> str:
    phrase, be = _phrase(finding)
    text = template.format(p=phrase, be=be)
    return text[:1].upper() + text[1:]


def write_report(labels: Mapping[str, int | None], seed: int | str = 0) -> str:
    """A real-style report stating a film's labels (see the module docstring for the rules).

    Args:
        labels: Finding -> ``1`` / ``0`` / ``-1`` / ``None`` (CheXpert names or extra findings).
        seed: Picks the phrasings; the same labels and seed give the same report. A string
            (a row's key) is hashed to a seed.

    Returns:
        The report text, sentences separated by single spaces (an empty string when no label
        is stated).
    """
    if isinstance(seed, str):
        seed = zlib.crc32(seed.encode("utf-8"))
    rng = np.random.default_rng(seed)
    stated, negatives = [], []
    normal = False
    for finding, value in labels.items():
        if value is None:
            continue
        if canonical_finding(finding) == "No Finding":
            normal = normal or value == POSITIVE
            continue
        if value == POSITIVE:
            options = AFFIRMED_PHRASINGS
        elif value == UNCERTAIN:
            options = HEDGED_PHRASINGS
        elif value == NEGATIVE:
            options = NEGATED_PHRASINGS
        else:
            continue
        sentence = _sentence(options[int(rng.integers(len(options)))], finding)
        (negatives if value == NEGATIVE else stated).append(sentence)
    if normal and not stated:
        stated.append(NORMAL_SENTENCE)
    return " ".join(stated + negatives)


def omit_finding(text: str, finding: str) -> str:
    """The report without the sentences that mention ``finding`` (the benchmark's "omitted").

    Args:
        text: Report text.
        finding: A CheXpert or extra NIH name (its terms in ``prompts.json`` say what mentions
            it) or a phrase matched literally.

    Returns:
        The remaining sentences joined by single spaces.
    """
    from explorer.vocab.negation import mentions, split_sentences

    terms = (finding,) if known_finding(finding) else (finding, _phrase(finding)[0])
    return " ".join(s for s in split_sentences(text) if not mentions(s, terms))


__all__ = [
    "AFFIRMED_PHRASINGS",
    "HEDGED_PHRASINGS",
    "NEGATED_PHRASINGS",
    "NORMAL_SENTENCE",
    "omit_finding",
    "write_report",
]

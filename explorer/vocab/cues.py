"""The cue vocabulary: the words that negate, hedge or state normality in a report.

One home, read by both readers of polarity: the rule-based negation engine
(:mod:`explorer.vocab.negation`, regular expressions) and the report labeler
(:mod:`explorer.reports.labeler`, NegEx through negspacy). The data lives in
``explorer/configs/cues.json``, one section per kind of cue:

* ``strong_hedge`` ("cannot exclude", "not ruled out"): uncertain, and it wins over a negation
  word inside it;
* ``negation`` ("no", "without", "has resolved"): negated;
* ``weak_hedge`` ("possible", "may", "versus"): uncertain, unless a negation covers it
  ("no suspicious nodule");
* ``upper_normal`` ("upper limits of normal", "top normal", "high normal"): a *hedge* on a
  size, so uncertain for both readers, as CheXpert-style labelers read it (the heart is not
  called normal, nor enlarged);
* ``normal`` ("normal", "clear", "unremarkable"): a statement of normality, which both readers
  count as a denial of the abnormality;
* ``termination``: where a NegEx scope ends (the labeler's).

Each section gives the cue twice only where the two readers need a different form: the
engine's ``pattern`` (regular-expression alternatives, matched case-insensitively at word
boundaries) and the labeler's ``negex`` term lists (literal phrases by NegEx position:
before the finding, after it, and "pseudo" phrases that look like a cue and are not).
``upper_normal`` is a single list both read. ``tests/test_cues.py`` checks that the two forms
of a section agree: no phrase the labeler reads as one polarity is read as another by the
engine, except the differences listed (with their reason) in ``known_differences``.

JSON rather than TOML: ``tomllib`` is only in the standard library from Python 3.11 and the
project supports 3.10; the other configs are JSON too.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from explorer.paths import configs_dir

log = logging.getLogger(__name__)


def cues_path() -> Path:
    """Where the cue vocabulary is kept (``explorer/configs/cues.json``)."""
    return configs_dir() / "cues.json"


@dataclass(frozen=True)
class NegexTerms:
    """One NegEx term set: the phrases of one kind of cue, by position.

    Attributes:
        preceding: Cues that act on the findings after them ("no", "possible").
        following: Cues that act on the findings before them ("is absent", "versus").
        pseudo: Phrases that contain a cue but are none ("no change", "not only").
        termination: Words that end a cue's scope ("but", "which").
    """

    preceding: tuple[str, ...]
    following: tuple[str, ...]
    pseudo: tuple[str, ...]
    termination: tuple[str, ...]

    def termset(self) -> dict[str, list[str]]:
        """The term set as negspacy's ``neg_termset`` option wants it."""
        return {
            "pseudo_negations": list(self.pseudo),
            "preceding_negations": list(self.preceding),
            "following_negations": list(self.following),
            "termination": list(self.termination),
        }


@dataclass(frozen=True)
class CueVocabulary:
    """The cue vocabulary of ``cues.json`` (see the module docstring for each part).

    Attributes:
        strong_hedge: Engine regex alternatives of strong hedges.
        negation: Engine regex alternatives of negation cues.
        plain_negation: The engine's plain negation words, under which a hedge word does not
            hedge ("no suspicious nodules").
        weak_hedge: Engine regex alternatives of weak hedges, ``upper_normal`` included.
        upper_normal: Regex alternatives of "upper limits of normal" and its kin (both readers).
        normal: Engine regex alternatives of normality cues.
        normal_not_before_device: Normality words that are no cue right before a device
            ("midline sternotomy wires").
        devices: Regex alternatives of the device words meant above.
        negex_strong_hedge: The labeler's strong-hedge term set.
        negex_negation: The labeler's negation term set.
        negex_weak_hedge: The labeler's weak-hedge term set.
        known_differences: Phrase -> why the two readers read it differently.
    """

    strong_hedge: tuple[str, ...]
    negation: tuple[str, ...]
    plain_negation: tuple[str, ...]
    weak_hedge: tuple[str, ...]
    upper_normal: tuple[str, ...]
    normal: tuple[str, ...]
    normal_not_before_device: tuple[str, ...]
    devices: tuple[str, ...]
    negex_strong_hedge: NegexTerms
    negex_negation: NegexTerms
    negex_weak_hedge: NegexTerms
    known_differences: dict[str, str]


def _negex(section: dict, termination: list[str], pseudo_extra: tuple[str, ...] = ()) -> NegexTerms:
    negex = section["negex"]
    return NegexTerms(
        preceding=tuple(negex["preceding"]),
        following=tuple(negex["following"]),
        pseudo=(*negex["pseudo"], *pseudo_extra),
        termination=tuple(termination),
    )


@functools.lru_cache(maxsize=1)
def cue_vocabulary() -> CueVocabulary:
    """The cue vocabulary, read once from ``explorer/configs/cues.json``."""
    path = cues_path()
    data = json.loads(path.read_text(encoding="utf-8"))
    hedge_end = list(data["termination"]["hedge"])
    negation_end = hedge_end + list(data["termination"]["negation"])
    strong = data["strong_hedge"]
    strong_negex = _negex(strong, hedge_end)
    # A negation word inside a strong hedge ("cannot exclude", "not ruled out") negates nothing.
    negation_negex = _negex(
        data["negation"], negation_end, strong_negex.preceding + strong_negex.following
    )
    upper_normal = tuple(data["upper_normal"])
    vocab = CueVocabulary(
        strong_hedge=tuple(strong["pattern"]),
        negation=tuple(data["negation"]["pattern"]),
        plain_negation=tuple(data["negation"]["plain"]),
        weak_hedge=(*data["weak_hedge"]["pattern"], *upper_normal),
        upper_normal=upper_normal,
        normal=tuple(data["normal"]["pattern"]),
        normal_not_before_device=tuple(data["normal"]["not_before_device"]),
        devices=tuple(data["normal"]["devices"]),
        negex_strong_hedge=strong_negex,
        negex_negation=negation_negex,
        negex_weak_hedge=_negex(data["weak_hedge"], hedge_end),
        known_differences=dict(data.get("known_differences", {})),
    )
    log.debug("loaded the cue vocabulary from %s", path)
    return vocab


def alternation(patterns: tuple[str, ...]) -> str:
    """Regex alternatives -> one non-capturing group ``(?:a|b|...)``."""
    return "(?:" + "|".join(patterns) + ")"

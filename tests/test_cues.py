"""The shared cue vocabulary (``explorer/vocab/cues.py``) and the agreement of its two readers.

The negation engine (:func:`explorer.vocab.negation.polarity`) and the report labeler
(:func:`explorer.reports.labeler.label_report`) read one cue vocabulary; these tests state that
they read the same sentences the same way, and that the two forms of each cue section (the
engine's regular expressions, the labeler's NegEx phrases) do not contradict each other.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from explorer.reports.labeler import label_report
from explorer.vocab.cues import CueVocabulary, NegexTerms, alternation, cue_vocabulary, cues_path
from explorer.vocab.labels import NEGATIVE, POSITIVE, UNCERTAIN
from explorer.vocab.negation import polarity

LABEL_OF = {"affirmed": POSITIVE, "negated": NEGATIVE, "uncertain": UNCERTAIN}

# (sentence, the finding it is about, the polarity both readers must give)
AGREEMENT = [
    # the sentence the two readers disagreed on: a hedge on the heart's size
    ("Heart size is upper limits of normal.", "Cardiomegaly", "uncertain"),
    ("Heart size is at the upper limits of normal.", "Cardiomegaly", "uncertain"),
    ("The heart is upper limits of normal in size.", "Cardiomegaly", "uncertain"),
    ("Heart size is top normal.", "Cardiomegaly", "uncertain"),
    ("Heart size is high normal.", "Cardiomegaly", "uncertain"),
    ("Heart size is normal.", "Cardiomegaly", "negated"),
    ("The heart is enlarged.", "Cardiomegaly", "affirmed"),
    ("No pleural effusion.", "Pleural Effusion", "negated"),
    ("There is a small right pleural effusion.", "Pleural Effusion", "affirmed"),
    ("Pneumonia cannot be excluded.", "Pneumonia", "uncertain"),
    ("Cannot exclude pneumothorax.", "Pneumothorax", "uncertain"),
    ("Pneumothorax is not ruled out.", "Pneumothorax", "uncertain"),
    ("Possible left basilar atelectasis.", "Atelectasis", "uncertain"),
    ("Findings may represent pneumonia.", "Pneumonia", "uncertain"),
    ("No suspicious nodules.", "Lung Lesion", "negated"),
    ("Pneumothorax has resolved.", "Pneumothorax", "negated"),
    ("There is no evidence of pneumothorax.", "Pneumothorax", "negated"),
]


@pytest.mark.parametrize(("sentence", "finding", "expected"), AGREEMENT)
def test_engine_and_labeler_agree(sentence, finding, expected):
    assert polarity(sentence) == expected
    assert label_report(sentence)[finding] == LABEL_OF[expected]


def test_vocabulary_is_loaded_once_and_frozen():
    vocab = cue_vocabulary()
    assert vocab is cue_vocabulary()
    assert isinstance(vocab, CueVocabulary)
    assert isinstance(vocab.negex_negation, NegexTerms)
    with pytest.raises(AttributeError):
        vocab.negation = ()  # type: ignore[misc]


def test_upper_normal_is_one_list_for_both_readers():
    vocab = cue_vocabulary()
    # the engine's weak hedges include the list as it is
    assert vocab.weak_hedge[-len(vocab.upper_normal) :] == vocab.upper_normal
    data = json.loads(cues_path().read_text(encoding="utf-8"))
    assert data["upper_normal"] == list(vocab.upper_normal)
    regex = re.compile(rf"\b{alternation(vocab.upper_normal)}\b", re.I)
    for phrase in ("upper limits of normal", "upper limit normal", "top normal", "high normal"):
        assert regex.search(phrase), phrase


def test_negation_pseudo_phrases_hold_every_strong_hedge():
    vocab = cue_vocabulary()
    strong = vocab.negex_strong_hedge
    assert set(strong.preceding) | set(strong.following) <= set(vocab.negex_negation.pseudo)
    termset = vocab.negex_negation.termset()
    assert set(termset) == {
        "pseudo_negations",
        "preceding_negations",
        "following_negations",
        "termination",
    }
    # a negation's scope ends where a hedge's does, and at more links ("which", "due to")
    assert set(vocab.negex_weak_hedge.termination) < set(vocab.negex_negation.termination)


def _engine_reading(vocab: CueVocabulary, phrase: str) -> str | None:
    """How the engine's patterns read a cue phrase on its own: hedges win over negation."""
    for patterns, reading in (
        (vocab.strong_hedge, "uncertain"),
        (vocab.weak_hedge, "uncertain"),
        (vocab.negation, "negated"),
        (vocab.normal, "negated"),
    ):
        if re.fullmatch(alternation(patterns), phrase, re.I):
            return reading
    return None


def _labeler_reading(vocab: CueVocabulary, phrase: str) -> str | None:
    """How the labeler's NegEx term sets read a cue phrase: strong, then negation, then weak."""
    for terms, reading in (
        (vocab.negex_strong_hedge, "uncertain"),
        (vocab.negex_negation, "negated"),
        (vocab.negex_weak_hedge, "uncertain"),
    ):
        if phrase in terms.preceding or phrase in terms.following:
            return reading
    return None


def _differences(vocab: CueVocabulary) -> dict[str, tuple[str, str]]:
    out = {}
    for terms in (vocab.negex_strong_hedge, vocab.negex_negation, vocab.negex_weak_hedge):
        for phrase in (*terms.preceding, *terms.following):
            engine = _engine_reading(vocab, phrase)
            labeler = _labeler_reading(vocab, phrase)
            if engine is not None and engine != labeler:
                out[phrase] = (engine, labeler)
    return out


def test_the_two_forms_of_the_vocabulary_agree():
    vocab = cue_vocabulary()
    differences = _differences(vocab)
    # every phrase both readers know is read alike, except the documented differences
    assert set(differences) == set(vocab.known_differences), differences
    assert all(len(why) > 40 for why in vocab.known_differences.values())


def test_a_contradiction_would_be_caught():
    vocab = cue_vocabulary()
    weak = vocab.negex_weak_hedge
    # "no" moved from the labeler's negations to its hedges: the engine still negates with it
    broken = dataclasses.replace(
        vocab,
        negex_negation=NegexTerms((), (), (), ()),
        negex_weak_hedge=dataclasses.replace(weak, preceding=(*weak.preceding, "no")),
    )
    assert _differences(broken)["no"] == ("negated", "uncertain")

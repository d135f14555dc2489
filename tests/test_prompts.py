"""Prompt templates and pairs (``explorer/vocab/prompts.py``), checked against the engine."""

from __future__ import annotations

import dataclasses

import pytest

from explorer.vocab.labels import CHEXPERT_FINDINGS
from explorer.vocab.negation import negate, polarity
from explorer.vocab.prompts import (
    PromptPair,
    prompt_pair,
    prompt_pairs,
    prompt_templates,
    typed_kind,
)

# --- prompt pairs -----------------------------------------------------------------------------

TEMPLATE_IDS = [t.id for t in prompt_templates()]


def test_templates_are_several_and_unique():
    assert len(TEMPLATE_IDS) >= 5
    assert len(set(TEMPLATE_IDS)) == len(TEMPLATE_IDS)


@pytest.mark.parametrize("name", CHEXPERT_FINDINGS)
def test_template_pairs_are_what_the_engine_makes(name):
    """For every finding and template the negated prompt is negate(affirmed), and back."""
    pairs = prompt_pairs(name)
    assert [p.template_id for p in pairs] == TEMPLATE_IDS
    for pair in pairs:
        assert pair.finding == name
        assert pair.affirmed != pair.negated
        assert negate(pair.affirmed) == pair.negated
        assert negate(pair.negated) == pair.affirmed
        assert polarity(pair.negated if name != "No Finding" else pair.affirmed) == "negated"


def test_prompt_pair_default_template_and_no_finding():
    pair = prompt_pair("Pleural Effusion")
    assert pair == PromptPair(
        "Pleural Effusion", "there is pleural effusion", "there is no pleural effusion", "there_is"
    )
    normal = prompt_pair("No Finding")
    assert normal.affirmed == "there is no acute cardiopulmonary abnormality"
    assert normal.negated == "there is acute cardiopulmonary abnormality"
    assert prompt_pair("Support Devices").affirmed == "there are support devices"


def test_prompt_pair_is_frozen():
    pair = prompt_pair("Cardiomegaly")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.affirmed = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "template", "affirmed", "negated"),
    [
        (
            "left lower lobe collapse",
            "there_is",
            "there is left lower lobe collapse",
            "there is no left lower lobe collapse",
        ),
        (
            "a small right apical pneumothorax",
            "there_is",
            "there is a small right apical pneumothorax",
            "there is no small right apical pneumothorax",
        ),
        (
            "a small right apical pneumothorax",
            "bare",
            "a small right apical pneumothorax",
            "no small right apical pneumothorax",
        ),
        (
            "no pleural effusion",
            "present",
            "pleural effusion is absent",  # the denial typed is what the row reports
            "pleural effusion is present",
        ),
        ("possible pneumonia", "seen", "pneumonia is seen", "pneumonia is not seen"),
        (
            "bilateral hilar lymphadenopathy",
            "radiograph_shows",
            "the chest radiograph shows bilateral hilar lymphadenopathy",
            "the chest radiograph shows no bilateral hilar lymphadenopathy",
        ),
    ],
)
def test_prompt_pair_free_text(text, template, affirmed, negated):
    pair = prompt_pair(text, template)
    assert (pair.finding, pair.affirmed, pair.negated, pair.template_id) == (
        text,
        affirmed,
        negated,
        template,
    )


def test_prompt_pair_rejects_empty_text_and_unknown_template():
    with pytest.raises(ValueError):
        prompt_pair("   ")
    with pytest.raises(ValueError):
        prompt_pair("Cardiomegaly", "no-such-template")


def test_prompt_pairs_subset_of_templates():
    pairs = prompt_pairs("Atelectasis", templates=["bare", "seen"])
    assert [(p.affirmed, p.negated) for p in pairs] == [
        ("atelectasis", "no atelectasis"),
        ("atelectasis is seen", "atelectasis is not seen"),
    ]


#: Typed findings as people type them, and the "there_is" pair each must give: noun phrases keep
#: every modifier on both sides, statements are taken as typed, a denial is what is affirmed.
TYPED = [
    ("small left pleural effusion", "there is small left pleural effusion", "there is no small left pleural effusion"),
    ("Small Left Pleural Effusion.", "there is small left pleural effusion", "there is no small left pleural effusion"),
    ("a small right apical pneumothorax", "there is a small right apical pneumothorax", "there is no small right apical pneumothorax"),
    ("bilateral pleural effusions", "there are bilateral pleural effusions", "there are no bilateral pleural effusions"),
    ("left lower lobe collapse", "there is left lower lobe collapse", "there is no left lower lobe collapse"),
    ("mild cardiomegaly", "there is mild cardiomegaly", "there is no mild cardiomegaly"),
    ("moderate pulmonary edema", "there is moderate pulmonary edema", "there is no moderate pulmonary edema"),
    ("a right upper lobe nodule", "there is a right upper lobe nodule", "there is no right upper lobe nodule"),
    ("an endotracheal tube", "there is an endotracheal tube", "there is no endotracheal tube"),
    ("a large hiatal hernia", "there is a large hiatal hernia", "there is no large hiatal hernia"),
    ("rib fractures", "there are rib fractures", "there are no rib fractures"),
    ("healed left rib fractures", "there are healed left rib fractures", "there are no healed left rib fractures"),
    ("interstitial opacities", "there are interstitial opacities", "there are no interstitial opacities"),
    ("tension pneumothorax", "there is tension pneumothorax", "there is no tension pneumothorax"),
    ("blunting of the costophrenic angles", "there is blunting of the costophrenic angles", "there is no blunting of the costophrenic angles"),
    ("left basilar atelectasis", "there is left basilar atelectasis", "there is no left basilar atelectasis"),
    ("a calcified granuloma", "there is a calcified granuloma", "there is no calcified granuloma"),
    ("pneumomediastinum", "there is pneumomediastinum", "there is no pneumomediastinum"),
    ("possible pneumonia", "there is pneumonia", "there is no pneumonia"),
    ("probable right lower lobe pneumonia", "there is right lower lobe pneumonia", "there is no right lower lobe pneumonia"),
    # denials: the typed statement is the pair's affirmed prompt, so its row reports P(typed)
    ("no pneumothorax", "there is no pneumothorax", "there is pneumothorax"),
    ("no focal consolidation", "there is no focal consolidation", "there is focal consolidation"),
    ("without effusion", "there is no effusion", "there is effusion"),
    ("no acute cardiopulmonary abnormality", "there is no acute cardiopulmonary abnormality", "there is acute cardiopulmonary abnormality"),
    # statements: a verb of their own, or a normal finding; no template wraps them
    ("heart size is normal", "heart size is normal", "heart size is enlarged"),
    ("lungs are clear", "lungs are clear", "lungs are not clear"),
    ("The lungs are clear.", "The lungs are clear", "The lungs are not clear"),
    ("the heart is enlarged", "the heart is enlarged", "the heart is not enlarged"),
    ("the cardiac silhouette is enlarged", "the cardiac silhouette is enlarged", "the cardiac silhouette is not enlarged"),
    ("the lungs are hyperinflated", "the lungs are hyperinflated", "the lungs are not hyperinflated"),
    ("pneumothorax is present", "pneumothorax is present", "pneumothorax is absent"),
    ("there is no pleural effusion", "there is no pleural effusion", "there is pleural effusion"),
    ("no pneumothorax is seen", "no pneumothorax is seen", "pneumothorax is seen"),
    ("clear lungs", "clear lungs", "opacified lungs"),
    ("normal heart size", "normal heart size", "enlarged heart size"),
]  # fmt: skip

_COPULA = __import__("re").compile(r"\b(?:is|are)\b")


@pytest.mark.parametrize(("typed", "affirmed", "negated"), TYPED, ids=[t[0] for t in TYPED])
def test_typed_findings_give_grammatical_pairs(typed, affirmed, negated):
    pair = prompt_pair(typed, "there_is")
    assert (pair.finding, pair.affirmed, pair.negated) == (typed, affirmed, negated)
    pairs = prompt_pairs(typed)
    statement = typed_kind(typed) == "statement"
    for p in pairs:
        for prompt in (p.affirmed, p.negated):
            # one verb at most: never "there is heart size is normal" or "X is present is seen"
            assert len(_COPULA.findall(prompt)) <= 1 + prompt.startswith("there is evidence"), (
                prompt
            )
            assert "no no" not in prompt and " a no " not in prompt and "no a " not in prompt
        assert p.affirmed != p.negated
        if statement:  # the same sentence whatever the template
            assert (p.affirmed, p.negated) == (affirmed, negated)
    if not statement:  # every word of the finding is on both sides, modifiers included
        core = prompt_pair(typed, "bare").affirmed.removeprefix("no ").removeprefix("a ")
        for p in pairs:
            assert core.removeprefix("an ") in p.affirmed and core.removeprefix("an ") in p.negated


def test_typed_kind_tells_statements_from_phrases():
    assert [typed_kind(t) for t in ("heart size is normal", "clear lungs", "no pneumothorax")] == [
        "statement",
        "statement",
        "phrase",
    ]
    assert typed_kind("possible pneumonia") == typed_kind("small effusion") == "phrase"

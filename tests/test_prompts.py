"""Prompt templates and pairs (``explorer/vocab/prompts.py``), checked against the engine."""

from __future__ import annotations

import dataclasses

import pytest

from explorer.vocab.labels import CHEXPERT_FINDINGS
from explorer.vocab.negation import negate, polarity
from explorer.vocab.prompts import PromptPair, prompt_pair, prompt_pairs, prompt_templates

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
            "there is no right apical pneumothorax",
        ),
        (
            "a small right apical pneumothorax",
            "bare",
            "a small right apical pneumothorax",
            "no right apical pneumothorax",
        ),
        (
            "no pleural effusion",
            "present",
            "pleural effusion is present",
            "pleural effusion is absent",
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

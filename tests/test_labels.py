"""The label vocabulary (``explorer/vocab/labels.py``): CheXpert names, values, phrases."""

from __future__ import annotations

import pytest

from explorer.errors import ExplorerError
from explorer.vocab.labels import (
    CHEXPERT_FINDINGS,
    EXTRA_FINDINGS,
    KNOWN_FINDINGS,
    LABEL_NAMES,
    LABEL_VALUE,
    NEGATIVE,
    POSITIVE,
    PROMPTS_PATH,
    UNCERTAIN,
    UnknownFindingError,
    canonical_finding,
    finding_phrase,
    finding_terms,
    known_finding,
)

# --- vocabulary -------------------------------------------------------------------------------


def test_label_constants_unchanged():
    assert len(CHEXPERT_FINDINGS) == 14
    assert CHEXPERT_FINDINGS[0] == "No Finding" and CHEXPERT_FINDINGS[-1] == "Support Devices"
    assert (POSITIVE, NEGATIVE, UNCERTAIN) == (1, 0, -1)


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("Pleural Effusion", "pleural effusion"),
        ("Enlarged Cardiomediastinum", "enlarged cardiomediastinum"),
        ("Support Devices", "support devices"),
        ("Edema", "pulmonary edema"),
        ("Pleural Other", "pleural thickening"),
        ("No Finding", "no acute cardiopulmonary abnormality"),
        ("pleural_effusion", "pleural effusion"),
        ("LUNG OPACITY", "lung opacity"),
        ("Hernia", "hernia"),
        ("emphysema", "emphysema"),
    ],
)
def test_finding_phrase(name, phrase):
    assert finding_phrase(name) == phrase


def test_every_finding_has_a_phrase_and_terms():
    for name in KNOWN_FINDINGS:
        assert finding_phrase(name)
        assert finding_terms(name)
    assert PROMPTS_PATH.is_file()


def test_unknown_finding_is_a_typed_error():
    with pytest.raises(UnknownFindingError) as info:
        finding_phrase("Pneumomediastinum")
    assert isinstance(info.value, ExplorerError)
    assert "Pneumomediastinum" in str(info.value)


def test_label_value_is_the_one_encoding():
    assert LABEL_VALUE == {POSITIVE: 1.0, NEGATIVE: -1.0, UNCERTAIN: 0.5}
    assert set(LABEL_VALUE) == set(LABEL_NAMES)


def test_extra_findings_are_known_but_not_chexpert():
    assert KNOWN_FINDINGS == CHEXPERT_FINDINGS + EXTRA_FINDINGS
    assert known_finding("hernia") == "Hernia" and canonical_finding("hernia") is None
    assert known_finding("pleural_effusion") == canonical_finding("pleural_effusion")
    assert known_finding("Pneumomediastinum") is None

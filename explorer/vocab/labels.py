"""The label vocabulary: the 14 CheXpert findings, their label values, and how each is phrased.

The single home of the CheXpert names and label values, shared by the app, the phantom world, the
labeler, the soft labels and training. Each finding's phrase and the terms that say a sentence
mentions it are read once from ``explorer/configs/prompts.json`` (its ``findings`` section),
which also phrases the three NIH findings CheXpert has no name for (:data:`EXTRA_FINDINGS`).
``No Finding`` is *inverted*: its label is positive for a normal study, so its phrase denies an
abnormality ("no acute cardiopulmonary abnormality").
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass

from explorer.errors import ExplorerError
from explorer.paths import configs_dir

#: The 14 CheXpert observations, in the order of the CheXpert paper (Irvin et al., 2019).
CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# CheXpert label values. ``None`` (blank) means "not mentioned".
POSITIVE = 1
NEGATIVE = 0
UNCERTAIN = -1
#: Words for the label values (``None`` / blank = not mentioned is left to the caller).
LABEL_NAMES = {POSITIVE: "positive", NEGATIVE: "negative", UNCERTAIN: "uncertain"}
#: The one numeric encoding of a label (or of what a text claims about a finding): positive /
#: affirmed ``+1``, negative / denied ``-1``, uncertain / hedged ``+0.5`` (a hedge leans towards
#: presence); blank / not mentioned is ``0`` (``LABEL_VALUE.get(value, 0.0)``). Used by the soft
#: labels (:mod:`explorer.vocab.soft_labels`) and by the training texts' claim vectors.
LABEL_VALUE = {POSITIVE: 1.0, NEGATIVE: -1.0, UNCERTAIN: 0.5}

#: Findings NIH ChestX-ray14 labels that CheXpert has no name for; kept as findings of their own.
#: The prompts (``prompts.json``) and the report labeler know them like the 14.
EXTRA_FINDINGS: tuple[str, ...] = ("Emphysema", "Fibrosis", "Hernia")
#: Every finding the vocabulary knows: the 14 CheXpert findings, then the extra NIH ones.
KNOWN_FINDINGS: tuple[str, ...] = CHEXPERT_FINDINGS + EXTRA_FINDINGS

#: The one stated mapping from NIH ChestX-ray14 label names to findings (Wang et al., CVPR 2017).
#: Several NIH labels can land on one CheXpert finding (Nodule and Mass are both Lung Lesion): a
#: film is positive for it when any of them is. NIH has no Support Devices, Fracture or Enlarged
#: Cardiomediastinum label, so those stay blank for NIH films.
NIH_TO_FINDING: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Emphysema": "Emphysema",
    "Fibrosis": "Fibrosis",
    "Hernia": "Hernia",
    "Infiltration": "Lung Opacity",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pleural_Thickening": "Pleural Other",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "No Finding": "No Finding",
}

log = logging.getLogger(__name__)

PROMPTS_PATH = configs_dir() / "prompts.json"


class UnknownFindingError(ExplorerError):
    """A name that is neither one of the 14 CheXpert findings nor an extra NIH finding."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"'{name}' is not one of the 14 CheXpert findings (nor Emphysema, Fibrosis or "
            "Hernia); type it as free text instead."
        )


@dataclass(frozen=True)
class FindingVocab:
    """How one CheXpert finding is phrased in prompts and recognised in text."""

    name: str
    phrase: str
    plural: bool
    inverted: bool
    terms: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def _vocab() -> dict[str, FindingVocab]:
    data = json.loads(PROMPTS_PATH.read_text(encoding="utf-8"))
    findings = {
        name: FindingVocab(
            name=name,
            phrase=entry["phrase"],
            plural=bool(entry.get("plural", False)),
            inverted=bool(entry.get("inverted", False)),
            terms=tuple(entry.get("terms", ())),
        )
        for name, entry in data["findings"].items()
    }
    missing = set(KNOWN_FINDINGS) - set(findings)
    if missing:
        raise ValueError(f"prompts.json lacks findings: {sorted(missing)}")
    log.debug("loaded %d findings from %s", len(findings), PROMPTS_PATH)
    return findings


def _named(name: str, findings: tuple[str, ...]) -> str | None:
    key = re.sub(r"[\s_-]+", " ", name).strip().lower()
    return next((finding for finding in findings if finding.lower() == key), None)


def canonical_finding(name: str) -> str | None:
    """The CheXpert name ``name`` stands for (case, underscores and hyphens ignored), or None."""
    return _named(name, CHEXPERT_FINDINGS)


def known_finding(name: str) -> str | None:
    """The CheXpert or extra NIH finding ``name`` stands for (as :func:`canonical_finding`,
    over :data:`KNOWN_FINDINGS`), or None."""
    return _named(name, KNOWN_FINDINGS)


def finding_vocab(name: str) -> FindingVocab:
    """The vocabulary entry of a CheXpert or extra NIH finding.

    Args:
        name: A finding name; case, underscores and hyphens are ignored ("pleural_effusion").

    Raises:
        UnknownFindingError: If ``name`` is not a known finding.
    """
    canonical = known_finding(name)
    if canonical is None:
        raise UnknownFindingError(name)
    return _vocab()[canonical]


def finding_phrase(name: str) -> str:
    """The natural phrase for a known finding, as it reads when the label is positive.

    Examples: "Pleural Effusion" -> "pleural effusion", "Support Devices" -> "support
    devices", "No Finding" -> "no acute cardiopulmonary abnormality".

    Args:
        name: A CheXpert or extra NIH name (case, underscores and hyphens are ignored).

    Raises:
        UnknownFindingError: If ``name`` is not a known finding.
    """
    vocab = finding_vocab(name)
    return f"no {vocab.phrase}" if vocab.inverted else vocab.phrase


def finding_terms(name: str) -> tuple[str, ...]:
    """The regular expressions that say a sentence mentions a known finding."""
    return finding_vocab(name).terms

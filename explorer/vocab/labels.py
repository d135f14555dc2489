"""The label vocabulary: the 14 CheXpert findings, their label values, and how each is phrased.

The single home of the CheXpert names and label values, shared by the app, the phantom world, the
labeler, the soft labels and training. Each finding's phrase and the terms that say a sentence
mentions it are read once from ``explorer/configs/prompts.json`` (its ``findings`` section).
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
EXTRA_FINDINGS: tuple[str, ...] = ("Emphysema", "Fibrosis", "Hernia")

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
    """A name that is not one of the 14 CheXpert findings."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"'{name}' is not one of the 14 CheXpert findings; type it as free text instead."
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
    missing = set(CHEXPERT_FINDINGS) - set(findings)
    if missing:
        raise ValueError(f"prompts.json lacks findings: {sorted(missing)}")
    log.debug("loaded %d findings from %s", len(findings), PROMPTS_PATH)
    return findings


def canonical_finding(name: str) -> str | None:
    """The CheXpert name ``name`` stands for (case, underscores and hyphens ignored), or None."""
    key = re.sub(r"[\s_-]+", " ", name).strip().lower()
    for finding in CHEXPERT_FINDINGS:
        if finding.lower() == key:
            return finding
    return None


def finding_vocab(name: str) -> FindingVocab:
    """The vocabulary entry of a CheXpert finding.

    Args:
        name: A CheXpert name; case, underscores and hyphens are ignored ("pleural_effusion").

    Raises:
        UnknownFindingError: If ``name`` is not a CheXpert finding.
    """
    canonical = canonical_finding(name)
    if canonical is None:
        raise UnknownFindingError(name)
    return _vocab()[canonical]


def finding_phrase(name: str) -> str:
    """The natural phrase for a CheXpert finding, as it reads when the label is positive.

    Examples: "Pleural Effusion" -> "pleural effusion", "Support Devices" -> "support
    devices", "No Finding" -> "no acute cardiopulmonary abnormality".

    Args:
        name: A CheXpert name (case, underscores and hyphens are ignored).

    Raises:
        UnknownFindingError: If ``name`` is not a CheXpert finding.
    """
    vocab = finding_vocab(name)
    return f"no {vocab.phrase}" if vocab.inverted else vocab.phrase


def finding_terms(name: str) -> tuple[str, ...]:
    """The regular expressions that say a sentence mentions a CheXpert finding."""
    return finding_vocab(name).terms

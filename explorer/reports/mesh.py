"""The Indiana University chest X-ray reports and their MeSH terms, read offline.

The ``torchxrayvision`` wheel ships the 3,955 reports of the Indiana University chest X-ray
collection (Demner-Fushman et al., JAMIA 2016; Open-i) as ``data/NLMCXR_reports.tgz``: one XML
file per report with COMPARISON, INDICATION, FINDINGS and IMPRESSION sections and the MeSH
terms that NLM indexers assigned (``<major>`` terms such as ``"Pulmonary Atelectasis/base/
left"``, or ``"normal"``). Licence CC BY-NC-ND 4.0: this module reads the archive where the
wheel put it and keeps the reports in memory only; it never writes them, whole or modified.

:func:`iu_reports` returns the reports; :func:`mesh_labels` turns a report's MeSH terms into
CheXpert labels; :func:`validate` compares :mod:`explorer.reports.labeler` with them.

**MeSH -> CheXpert.** A MeSH major term is a descriptor followed by ``/``-separated
qualifiers (location, severity, shape). :data:`MESH_RULES` maps descriptors, some only with a
qualifier: ``Thickening`` / ``Cicatrix`` / ``Calcinosis`` on the pleura are Pleural Other,
``Cardiac Shadow`` when enlarged or borderline is Cardiomegaly, ``Density`` in the lung is Lung
Opacity, and a *round* ``Opacity`` or ``Density`` (the indexers' code for "nodular opacity")
is also Lung Lesion unless it projects over bone, breast or mediastinum. Deliberately *not*
mapped: ``Costophrenic Angle/blunted`` (a sign, not an effusion; the labeler calls blunting an
uncertain effusion), ``Calcified Granuloma`` / ``Granuloma`` (CheXpert's Lung Lesion is nodule,
mass, tumour), ``Markings`` (chronic interstitial or bronchovascular markings are not edema),
``Volume Loss``, ``Spinal Fusion``, ``Breast Implants``. ``Pulmonary Congestion`` and
``Heart Failure`` count as Edema, as vascular congestion and failure do in CheXpert. The three
extra NIH findings: ``Emphysema``, ``Pulmonary Emphysema`` and ``Bullous Emphysema`` are
Emphysema (not ``Subcutaneous`` or ``Mediastinal Emphysema``, nor ``Pulmonary Disease, Chronic
Obstructive``), ``Pulmonary Fibrosis`` is Fibrosis (not ``Cystic Fibrosis``), ``Hernia, Hiatal``
and ``Hernia, Diaphragmatic`` are Hernia. They are scored but kept out of the macro F1, which
stays over the 14 CheXpert findings.

**How absence counts.** Indexers list what is present; nothing is indexed as absent. So MeSH
gives positives only: a finding without a MeSH term is "negative or not mentioned", and the
comparison is *labeler positive vs MeSH positive* (precision, recall, F1 per finding). Reports
whose MeSH is "No Indexing" (often normal reports that were simply not indexed) and empty
reports are left out. No Finding is compared with the MeSH term "normal".

**Uncertain labels** count as *negative* by default. Measured on these reports, MeSH indexes
only about a third of the findings the labeler calls uncertain, and not consistently: hedged
pneumonia ("concerning for pneumonia") is almost never indexed, "heart size upper limits of
normal" is indexed as normal, while "atelectasis versus infiltrate", "probable effusion" and
"borderline cardiomegaly" usually are indexed. :func:`validate` computes both policies and
shows the other one next to the chosen one.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from explorer.errors import ExplorerError
from explorer.vocab.labels import CHEXPERT_FINDINGS, KNOWN_FINDINGS, POSITIVE, UNCERTAIN

log = logging.getLogger(__name__)

_ARCHIVE = ("data", "NLMCXR_reports.tgz")
#: Findings with at least this many MeSH positives enter the macro F1.
MIN_SUPPORT = 30


class IUReportsUnavailableError(ExplorerError):
    """The IU reports archive cannot be found or read."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            "The Indiana University reports are not available here: the torchxrayvision "
            "package, which ships them, is missing or incomplete."
        )


@dataclass(frozen=True)
class IUReport:
    """One Indiana University chest X-ray report.

    Attributes:
        id: The collection's id ("CXR1"); image ids start with it ("CXR1_1_IM-0001-3001").
        findings: The FINDINGS section ("" when absent).
        impression: The IMPRESSION section ("" when absent).
        mesh: The MeSH major terms as written ("Cardiomegaly/mild", "normal").
        indication: The INDICATION section ("" when absent).
        image_ids: The ids of the report's images.
    """

    id: str
    findings: str
    impression: str
    mesh: tuple[str, ...]
    indication: str = ""
    image_ids: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """FINDINGS then IMPRESSION, separated by a line break (either may be empty)."""
        return "\n".join(p for p in (self.findings, self.impression) if p)


def archive_path() -> Path:
    """Where the installed torchxrayvision keeps ``NLMCXR_reports.tgz`` (without importing it).

    Raises:
        IUReportsUnavailableError: If torchxrayvision or the archive is missing.
    """
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise IUReportsUnavailableError("torchxrayvision is not installed")
    for folder in spec.submodule_search_locations:
        path = Path(folder).joinpath(*_ARCHIVE)
        if path.is_file():
            return path
    raise IUReportsUnavailableError("NLMCXR_reports.tgz is not in the torchxrayvision package")


def _text(el: ET.Element | None) -> str:
    return re.sub(r"\s+", " ", (el.text or "") if el is not None else "").strip()


def _parse(raw: bytes) -> IUReport:
    root = ET.fromstring(raw)
    sections = {a.get("Label", ""): _text(a) for a in root.iter("AbstractText")}
    uid = root.find("uId")
    return IUReport(
        id=uid.get("id", "") if uid is not None else "",
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        mesh=tuple(_text(m) for m in root.iter("major") if _text(m)),
        indication=sections.get("INDICATION", ""),
        image_ids=tuple(p.get("id", "") for p in root.iter("parentImage")),
    )


@functools.lru_cache(maxsize=1)
def _load() -> tuple[IUReport, ...]:
    path = archive_path()
    reports: list[tuple[int, IUReport]] = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".xml"):
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                report = _parse(handle.read())
                number = re.sub(r"\D", "", Path(member.name).stem) or "0"
                reports.append((int(number), report))
    except (OSError, tarfile.TarError, ET.ParseError) as err:
        raise IUReportsUnavailableError(f"cannot read {path.name}: {err}") from err
    reports.sort(key=lambda pair: pair[0])
    log.info("read %d IU reports from %s", len(reports), path)
    return tuple(r for _, r in reports)


def iu_reports() -> list[IUReport]:
    """The 3,955 IU reports in id order, read once and cached in memory.

    Returns:
        A new list (the reports themselves are frozen).

    Raises:
        IUReportsUnavailableError: If torchxrayvision or its archive is missing.
    """
    return list(_load())


# =============================================================================================
# MeSH -> CheXpert
# =============================================================================================

_LUNG_PLACES = ("lung", "retrocardiac", "lingula", "lobe", "pulmonary alveoli")
#: A round opacity or density is a nodule unless it projects over bone, breast or mediastinum.
_NOT_LUNG = (
    "ribs breast vertebrae spine mediastinum paratracheal clavicle sternum humerus shoulder "
    "abdomen neck nipple diaphragm costophrenic"
)
_ROUND = ("round", *(f"!{p}" for p in _NOT_LUNG.split(" ")))

#: (descriptor, CheXpert findings, qualifier condition or None). A condition is a tuple of words
#: of which one must appear among the term's qualifiers; "!word" forbids a word.
MESH_RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...] | None], ...] = (
    ("normal", ("No Finding",), None),
    ("Mediastinum", ("Enlarged Cardiomediastinum",), ("enlarged", "prominent", "widened")),
    ("Cardiomegaly", ("Cardiomegaly",), None),
    ("Cardiac Shadow", ("Cardiomegaly",), ("enlarged", "borderline")),
    ("Opacity", ("Lung Opacity",), None),
    ("Opacity", ("Lung Lesion",), _ROUND),
    ("Airspace Disease", ("Lung Opacity",), None),
    ("Infiltrate", ("Lung Opacity",), None),
    ("Density", ("Lung Opacity",), _LUNG_PLACES),
    ("Density", ("Lung Lesion",), _ROUND),
    ("Nodule", ("Lung Lesion",), None),
    ("Mass", ("Lung Lesion",), _LUNG_PLACES),
    ("Cavitation", ("Lung Lesion",), None),
    ("Pulmonary Edema", ("Edema",), None),
    ("Pulmonary Congestion", ("Edema",), None),
    ("Heart Failure", ("Edema",), None),
    ("Consolidation", ("Consolidation",), None),
    ("Pneumonia", ("Pneumonia",), None),
    ("Pulmonary Atelectasis", ("Atelectasis",), None),
    ("Pneumothorax", ("Pneumothorax",), None),
    ("Hydropneumothorax", ("Pneumothorax", "Pleural Effusion"), None),
    ("Hemopneumothorax", ("Pneumothorax", "Pleural Effusion"), None),
    ("Pleural Effusion", ("Pleural Effusion",), None),
    ("Hemothorax", ("Pleural Effusion",), None),
    ("Thickening", ("Pleural Other",), ("pleura",)),
    ("Cicatrix", ("Pleural Other",), ("pleura",)),
    ("Calcinosis", ("Pleural Other",), ("pleura",)),
    ("Pleura", ("Pleural Other",), ("!blunted",)),
    ("Fractures, Bone", ("Fracture",), None),
    ("Catheters, Indwelling", ("Support Devices",), None),
    ("Implanted Medical Device", ("Support Devices",), None),
    ("Surgical Instruments", ("Support Devices",), None),
    ("Tube, Inserted", ("Support Devices",), None),
    ("Medical Device", ("Support Devices",), None),
    ("Stents", ("Support Devices",), None),
    ("Sutures", ("Support Devices",), None),
    ("Emphysema", ("Emphysema",), None),
    ("Pulmonary Emphysema", ("Emphysema",), None),
    ("Bullous Emphysema", ("Emphysema",), None),
    ("Pulmonary Fibrosis", ("Fibrosis",), None),
    ("Hernia, Hiatal", ("Hernia",), None),
    ("Hernia, Diaphragmatic", ("Hernia",), None),
)
_RULES_BY_HEAD: dict[str, list[tuple[tuple[str, ...], tuple[str, ...] | None]]] = {}
for _head, _findings, _condition in MESH_RULES:
    _RULES_BY_HEAD.setdefault(_head.lower(), []).append((_findings, _condition))


def _matches(qualifiers: list[str], condition: tuple[str, ...] | None) -> bool:
    if condition is None:
        return True
    wanted = [w for w in condition if not w.startswith("!")]
    forbidden = [w[1:] for w in condition if w.startswith("!")]
    if any(any(f in q for q in qualifiers) for f in forbidden):
        return False
    return not wanted or any(any(w in q for q in qualifiers) for w in wanted)


def mesh_findings(terms: Sequence[str]) -> frozenset[str]:
    """The known findings (CheXpert and the extra NIH ones) that MeSH major terms assert.

    Args:
        terms: MeSH major terms as in :attr:`IUReport.mesh` ("Pleural Effusion/right/small").

    Returns:
        The finding names present (possibly empty).
    """
    out: set[str] = set()
    for term in terms:
        parts = [p.strip().lower() for p in term.split("/")]
        for findings, condition in _RULES_BY_HEAD.get(parts[0], ()):
            if _matches(parts[1:], condition):
                out.update(findings)
    return frozenset(out)


def mesh_labels(report: IUReport) -> dict[str, int | None]:
    """A report's MeSH terms as labels over the known findings: ``1`` where MeSH asserts a
    finding, else None.

    MeSH never states absence, so there are no ``0`` or ``-1`` values.
    """
    present = mesh_findings(report.mesh)
    return {f: (POSITIVE if f in present else None) for f in KNOWN_FINDINGS}


def is_indexed(report: IUReport) -> bool:
    """Whether a report has text and MeSH indexing (not "No Indexing")."""
    return bool(report.text.strip()) and not any(
        t.strip().lower().startswith("no indexing") for t in report.mesh
    )


# =============================================================================================
# Validation
# =============================================================================================

UncertainPolicy = Literal["negative", "positive"]
UNCERTAIN_POLICIES: tuple[UncertainPolicy, ...] = ("negative", "positive")


@dataclass(frozen=True)
class FindingScore:
    """Labeler positive vs MeSH positive for one finding.

    Attributes:
        finding: The finding's name.
        precision: Of the reports the labeler calls positive, the share MeSH indexes.
        recall: Of the reports MeSH indexes, the share the labeler calls positive.
        f1: Harmonic mean of precision and recall (0 when both are 0).
        support: MeSH positives.
        predicted: Labeler positives.
        true_positives: Reports positive for both.
    """

    finding: str
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int
    true_positives: int


@dataclass(frozen=True)
class Disagreement:
    """One report where the labeler and MeSH disagree on one finding.

    Attributes:
        report_id: The IU id ("CXR123").
        finding: The finding.
        kind: ``"labeler only"`` (labeler positive, not in MeSH) or ``"MeSH only"``.
        labeler_value: The labeler's value (``1``, ``-1``, ``0`` or ``None``).
        mesh: The report's MeSH major terms.
        evidence: The sentence behind the labeler's value ("" when it did not mention it).
        cue: The cue that decided the labeler's value, if any.
        text: The report text (for reading; never written anywhere).
    """

    report_id: str
    finding: str
    kind: str
    labeler_value: int | None
    mesh: tuple[str, ...]
    evidence: str
    cue: str | None
    text: str


@dataclass(frozen=True)
class Validation:
    """The labeler scored against MeSH on the IU reports.

    Attributes:
        scores: One :class:`FindingScore` per known finding (CheXpert order, then the extras),
            with uncertain labels counted as :attr:`uncertain` says.
        macro_f1: Mean F1 of :attr:`scores` over :attr:`macro_findings`.
        macro_findings: CheXpert findings with at least :data:`MIN_SUPPORT` MeSH positives.
        disagreements: Every report x finding where the two differ (under :attr:`uncertain`).
        n_reports: Reports compared (indexed, non-empty).
        uncertain: How uncertain labels counted: ``"negative"`` or ``"positive"``.
        other_scores: The same scores with uncertain counted the other way.
        other_macro_f1: Their macro F1.
    """

    scores: tuple[FindingScore, ...]
    macro_f1: float
    macro_findings: tuple[str, ...]
    disagreements: tuple[Disagreement, ...]
    n_reports: int
    uncertain: UncertainPolicy
    other_scores: tuple[FindingScore, ...]
    other_macro_f1: float

    @property
    def other_policy(self) -> UncertainPolicy:
        """The policy of :attr:`other_scores`."""
        return "positive" if self.uncertain == "negative" else "negative"

    def to_markdown(self) -> str:
        """The per-finding table and both macro F1 values as markdown."""
        other = self.other_policy
        lines = [
            "| finding | precision | recall | F1 | MeSH positives | labeler positives "
            f"| F1 (uncertain as {other}) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for s, o in zip(self.scores, self.other_scores, strict=True):
            mark = (
                " †"
                if s.finding not in CHEXPERT_FINDINGS
                else ""
                if s.finding in self.macro_findings
                else " *"
            )
            lines.append(
                f"| {s.finding}{mark} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} | "
                f"{s.support} | {s.predicted} | {o.f1:.3f} |"
            )
        lines += [
            "",
            f"Macro F1 over the {len(self.macro_findings)} findings with >= {MIN_SUPPORT} MeSH "
            f"positives: **{self.macro_f1:.3f}** (uncertain counted as {self.uncertain}; "
            f"{self.other_macro_f1:.3f} with uncertain counted as {other}). "
            f"{self.n_reports} indexed IU reports; labeler positive vs MeSH positive; "
            f"* = fewer than {MIN_SUPPORT} MeSH positives, not in the macro F1; "
            "† = an extra NIH finding, not in the macro F1.",
        ]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """Plain data for JSON (the disagreements are counted, not listed)."""
        return {
            "n_reports": self.n_reports,
            "uncertain": self.uncertain,
            "macro_f1": self.macro_f1,
            "macro_findings": list(self.macro_findings),
            "min_support": MIN_SUPPORT,
            "scores": [asdict(s) for s in self.scores],
            f"macro_f1_uncertain_{self.other_policy}": self.other_macro_f1,
            "disagreements": len(self.disagreements),
        }


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _score(finding: str, said: list[bool], gold: list[bool]) -> FindingScore:
    tp = sum(a and b for a, b in zip(said, gold, strict=True))
    predicted, support = sum(said), sum(gold)
    p, r = _ratio(tp, predicted), _ratio(tp, support)
    return FindingScore(
        finding=finding,
        precision=p,
        recall=r,
        f1=_ratio(2 * p * r, p + r),
        support=support,
        predicted=predicted,
        true_positives=tp,
    )


def _macro(scores: Sequence[FindingScore], findings: Sequence[str]) -> float:
    chosen = [s.f1 for s in scores if s.finding in findings]
    return sum(chosen) / len(chosen) if chosen else 0.0


def validate(
    reports: Sequence[IUReport] | None = None,
    *,
    uncertain: UncertainPolicy = "negative",
) -> Validation:
    """Score the labeler against MeSH (labeler positive vs MeSH positive, per finding).

    Args:
        reports: IU reports (default: all of :func:`iu_reports`); reports without text or
            with "No Indexing" are skipped.
        uncertain: Count the labeler's uncertain (``-1``) as ``"negative"`` (default; see the
            module docstring for why) or ``"positive"``. Both are computed; this one leads.

    Returns:
        Per-finding precision / recall / F1 / support, the macro F1 over findings with at
        least :data:`MIN_SUPPORT` MeSH positives, and every disagreement.
    """
    from explorer.reports.labeler import label_reports_detailed

    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, not {uncertain!r}")
    chosen = [r for r in (iu_reports() if reports is None else reports) if is_indexed(r)]
    results = label_reports_detailed([r.text for r in chosen])
    truth = [mesh_findings(r.mesh) for r in chosen]
    counted = {
        "negative": {POSITIVE},
        "positive": {POSITIVE, UNCERTAIN},
    }
    other = "positive" if uncertain == "negative" else "negative"
    scores: dict[str, list[FindingScore]] = {uncertain: [], other: []}
    disagreements: list[Disagreement] = []
    for j, finding in enumerate(KNOWN_FINDINGS):
        gold = [finding in present for present in truth]
        for policy in (uncertain, other):
            said = [res.values[j] in counted[policy] for res in results]
            scores[policy].append(_score(finding, said, gold))
            if policy != uncertain:
                continue
            for report, res, s, g in zip(chosen, results, said, gold, strict=True):
                if s == g:
                    continue
                ev = res.evidence(finding)
                disagreements.append(
                    Disagreement(
                        report_id=report.id,
                        finding=finding,
                        kind="labeler only" if s else "MeSH only",
                        labeler_value=res.values[j],
                        mesh=report.mesh,
                        evidence=ev.sentence if ev else "",
                        cue=ev.cue if ev else None,
                        text=report.text,
                    )
                )
    macro = tuple(
        s.finding
        for s in scores[uncertain]
        if s.support >= MIN_SUPPORT and s.finding in CHEXPERT_FINDINGS
    )
    result = Validation(
        scores=tuple(scores[uncertain]),
        macro_f1=_macro(scores[uncertain], macro),
        macro_findings=macro,
        disagreements=tuple(disagreements),
        n_reports=len(chosen),
        uncertain=uncertain,
        other_scores=tuple(scores[other]),
        other_macro_f1=_macro(scores[other], macro),
    )
    log.info("validated the labeler on %d IU reports: macro F1 %.3f", len(chosen), result.macro_f1)
    return result


__all__ = [
    "MESH_RULES",
    "MIN_SUPPORT",
    "UNCERTAIN_POLICIES",
    "Disagreement",
    "FindingScore",
    "IUReport",
    "IUReportsUnavailableError",
    "Validation",
    "archive_path",
    "is_indexed",
    "iu_reports",
    "mesh_findings",
    "mesh_labels",
    "validate",
]

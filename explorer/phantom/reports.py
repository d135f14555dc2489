"""Radiology-style reports for phantom chest radiographs.

:func:`generate_report` writes a FINDINGS and an IMPRESSION section for a
:class:`~explorer.phantom.records.Phantom`, drawing from many templates per finding so that
the wording varies the way real reports do (laterality and severity words, synonyms such as
"effusion" / "pleural fluid", combined negatives, hedged statements).

Rules the generator keeps:

* Every present finding is mentioned, as positive (status 1) or - for a fraction of the
  mild/small ones - as uncertain (status -1, e.g. "Cannot exclude a small left effusion.").
* Absent findings are mentioned as negative (status 0) only sometimes; unmentioned findings
  have a blank (``None``) label.
* One sentence is about one finding wherever practical. Combined negatives ("No pleural
  effusion or pneumothorax.") list every finding they negate. Sentences about no particular
  finding ("No acute cardiopulmonary process.", the view) have ``findings == ()``.
* Pneumonia is never a phantom finding; an impression may *interpret* a consolidation as
  pneumonia, recorded in :attr:`ReportSentence.extra` (CheXpert "Pneumonia" 1 or -1).

Hard negatives for contrastive training
---------------------------------------
A later training step builds a *hard negative* text for an image from its own report:

1. **negated**: take a sentence about a present finding (:meth:`Report.sentences_about`) and
   rewrite it into its negation with the negation engine of :mod:`explorer.vocab.negation`
   ("Moderate left pleural effusion." -> "No left pleural effusion."), then put it back in
   place; or
2. **omitted**: drop the finding altogether with :meth:`Report.without`, which removes its
   sentences (and rewrites combined negatives without it), giving a report that is silent
   about the finding.

Both keep the rest of the report intact, so the only difference between the positive and the
negative text is the finding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from explorer.phantom.records import (
    CHEXPERT_MAPPING,
    MILD_SEVERITIES,
    OPACITY_FINDINGS,
    PATHOLOGY_FINDINGS,
    PHANTOM_FINDINGS,
    FindingInstance,
    Phantom,
)
from explorer.vocab.labels import CHEXPERT_FINDINGS, NEGATIVE, POSITIVE, UNCERTAIN

#: Image units per centimetre in the phantom world (a 28 cm wide thorax spans ~1.55 units).
UNITS_PER_CM = 0.055

SECTIONS = ("findings", "impression")
_STATUSES = (POSITIVE, NEGATIVE, UNCERTAIN)
#: Probability that a present mild/small finding is reported with hedged (uncertain) wording.
UNCERTAIN_FRACTION = 0.3

#: Probability that an absent finding is mentioned as negative in the findings section.
MENTION_ABSENT: Mapping[str, float] = {
    "cardiomegaly": 0.75,
    "pleural effusion": 0.8,
    "pneumothorax": 0.75,
    "consolidation": 0.7,
    "atelectasis": 0.15,
    "pulmonary edema": 0.45,
    "nodule/mass": 0.25,
    "enlarged cardiomediastinum": 0.45,
    "rib fracture": 0.45,
    "support devices": 0.06,
}

#: Noun phrases used when a combined negative sentence is rebuilt ("No {a} or {b}.").
NEGATIVE_NOUNS: Mapping[str, str] = {
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "pleural effusion",
    "pneumothorax": "pneumothorax",
    "consolidation": "focal consolidation",
    "atelectasis": "atelectasis",
    "pulmonary edema": "pulmonary edema",
    "nodule/mass": "pulmonary nodule",
    "enlarged cardiomediastinum": "mediastinal widening",
    "rib fracture": "acute rib fracture",
    "support devices": "lines or tubes",
}


@dataclass(frozen=True)
class ReportSentence:
    """One sentence of a report.

    Attributes:
        text: The sentence, capitalised and ending with a full stop.
        section: ``"findings"`` or ``"impression"``.
        findings: Canonical phantom finding names the sentence is about (empty for general
            statements such as "No acute cardiopulmonary process.").
        status: ``POSITIVE`` (1), ``NEGATIVE`` (0) or ``UNCERTAIN`` (-1) for those findings.
        extra: Further CheXpert labels the sentence states, as (observation, status) pairs;
            used for interpretations such as "concerning for pneumonia".
    """

    text: str
    section: str
    findings: tuple[str, ...]
    status: int
    extra: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.section not in SECTIONS:
            raise ValueError(f"section must be one of {SECTIONS}, got {self.section!r}.")
        if self.status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, got {self.status!r}.")
        unknown = [f for f in self.findings if f not in PHANTOM_FINDINGS]
        if unknown:
            raise ValueError(f"Unknown phantom findings {unknown}.")
        for name, status in self.extra:
            if name not in CHEXPERT_FINDINGS or status not in _STATUSES:
                raise ValueError(f"Bad extra label {(name, status)!r}.")


_PRIORITY = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}


def _merge(current: int | None, new: int) -> int:
    """CheXpert-style aggregation: positive beats uncertain beats negative."""
    if current is None or _PRIORITY[new] > _PRIORITY[current]:
        return new
    return current


@dataclass(frozen=True)
class Report:
    """A generated report.

    Attributes:
        sentences: Sentences in reading order (findings section first).
        referral: Neutral impression used by :meth:`without` when it empties the impression.
    """

    sentences: tuple[ReportSentence, ...]
    referral: str = field(default="Findings as above.", repr=False)

    def section(self, name: str) -> tuple[ReportSentence, ...]:
        """Sentences of one section (``"findings"`` or ``"impression"``)."""
        return tuple(s for s in self.sentences if s.section == name)

    @property
    def findings_text(self) -> str:
        """Text of the FINDINGS section."""
        return " ".join(s.text for s in self.section("findings"))

    @property
    def impression_text(self) -> str:
        """Text of the IMPRESSION section."""
        return " ".join(s.text for s in self.section("impression"))

    @property
    def text(self) -> str:
        """The full report: ``"FINDINGS: ... IMPRESSION: ..."``."""
        return f"FINDINGS: {self.findings_text} IMPRESSION: {self.impression_text}"

    @property
    def labels(self) -> dict[str, int | None]:
        """CheXpert labels stated by the report (1 / 0 / -1, ``None`` = not mentioned).

        Each sentence's status is given to the CheXpert observations of its findings
        (:data:`~explorer.phantom.records.CHEXPERT_MAPPING`) and its ``extra`` labels, keeping
        positive over uncertain over negative. "Lung Opacity" aggregates consolidation,
        atelectasis, edema and lung lesion the same way; "No Finding" is 1 unless some
        pathology is positive or uncertain (then 0).
        """
        out: dict[str, int | None] = {name: None for name in CHEXPERT_FINDINGS}
        for s in self.sentences:
            for f in s.findings:
                chex = CHEXPERT_MAPPING[f]
                out[chex] = _merge(out[chex], s.status)
            for name, status in s.extra:
                out[name] = _merge(out[name], status)
        for f in OPACITY_FINDINGS:
            value = out[CHEXPERT_MAPPING[f]]
            if value is not None:
                out["Lung Opacity"] = _merge(out["Lung Opacity"], value)
        pathology = [n for n in CHEXPERT_FINDINGS if n not in ("No Finding", "Support Devices")]
        abnormal = any(out[n] in (POSITIVE, UNCERTAIN) for n in pathology)
        out["No Finding"] = NEGATIVE if abnormal else POSITIVE
        return out

    def mentioned(self) -> dict[str, int]:
        """Phantom findings the report mentions, with their (aggregated) status."""
        out: dict[str, int] = {}
        for s in self.sentences:
            for f in s.findings:
                out[f] = _merge(out.get(f), s.status)
        return out

    def sentences_about(self, finding: str) -> tuple[ReportSentence, ...]:
        """Sentences that mention ``finding``."""
        return tuple(s for s in self.sentences if finding in s.findings)

    def without(self, finding: str) -> Report:
        """The same report with nothing said about ``finding``.

        Sentences about only that finding are dropped; combined sentences about several
        findings are rewritten as a plain negative list of the others ("No pleural effusion
        or pneumothorax." without pneumothorax -> "No pleural effusion."). An impression left
        empty gets a neutral referral sentence ("Findings as above.") with no findings, a
        wording the generator also uses in ordinary reports.

        Args:
            finding: A canonical phantom finding name.

        Returns:
            A new report; the report itself is unchanged.
        """
        if finding not in PHANTOM_FINDINGS:
            raise ValueError(f"Unknown phantom finding {finding!r}.")
        kept: list[ReportSentence] = []
        for s in self.sentences:
            if finding not in s.findings:
                kept.append(s)
                continue
            rest = tuple(f for f in s.findings if f != finding)
            if rest:
                kept.append(replace(s, text=negative_list_sentence(rest), findings=rest))
        if not any(s.section == "impression" for s in kept) and self.section("impression"):
            kept.append(ReportSentence(self.referral, "impression", (), NEGATIVE))
        return replace(self, sentences=tuple(kept))


def negative_list_sentence(findings: Sequence[str]) -> str:
    """Plain combined negative, e.g. ``"No pleural effusion, pneumothorax or cardiomegaly."``."""
    nouns = [NEGATIVE_NOUNS[f] for f in findings]
    body = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " or " + nouns[-1]
    return f"No {body}."


# --- wording helpers --------------------------------------------------------------------------


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _clean(text: str) -> str:
    """Collapse double spaces and fix spacing before punctuation; capitalise."""
    text = " ".join(text.split())
    for p in (" .", " ,"):
        text = text.replace(p, p[1:])
    return _cap(text)


class _Writer:
    """Template picker bound to one random generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def pick(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)


_SEV_ADJ = {
    "cardiomegaly": {"mild": ["mild"], "moderate": ["moderate"], "large": ["marked", "severe"]},
    "pleural effusion": {"small": ["small", "trace"], "moderate": ["moderate"], "large": ["large"]},
    "pneumothorax": {"small": ["small", "tiny"], "moderate": ["moderate"], "large": ["large"]},
    "pulmonary edema": {
        "mild": ["mild", "mild interstitial"],
        "moderate": ["moderate"],
        "large": ["severe", "marked"],
    },
    "enlarged cardiomediastinum": {
        "mild": ["mildly"],
        "moderate": ["moderately"],
        "large": ["markedly"],
    },
}
_CARDIO_ADV = {"mild": "mildly", "moderate": "moderately", "large": "markedly"}


def _lobe(side: str, location: str | None) -> str:
    if location == "middle":
        return "right middle lobe"
    return f"{side} {location or 'lower'} lobe"


def _zone(side: str, location: str | None, w: _Writer) -> str:
    """'right base', 'left upper zone', ... for a lung location."""
    loc = location or "lower"
    if loc in ("lower", "basal"):
        return w.pick(
            [f"{side} base", f"{side} lung base", f"{side} lower zone", f"{side} lower lobe"]
        )
    if loc == "middle":
        return w.pick(["right middle lobe", "right midlung", "right middle zone"])
    if loc == "mid":
        return w.pick([f"{side} midlung", f"{side} mid zone", f"{side} mid lung zone"])
    return w.pick(
        [f"{side} upper lobe", f"{side} upper zone", f"{side} apex", f"{side} upper lung"]
    )


def _diameter_cm(inst: FindingInstance) -> float:
    size = inst.mask.shape[0]
    diameter_units = 2.0 * math.sqrt(inst.area / math.pi) * (2.0 / size)
    return max(0.5, round(diameter_units / UNITS_PER_CM * 2) / 2)  # nearest 0.5 cm


# --- positive / uncertain sentences per finding ----------------------------------------------


def _positive(inst: FindingInstance, w: _Writer, section: str) -> list[tuple[str, tuple]]:
    """Positive sentences (text, extra) for a present finding; usually one."""
    name, side, sev = inst.name, inst.laterality or "", inst.severity or ""
    adj = w.pick(_SEV_ADJ[name][sev]) if name in _SEV_ADJ and sev in _SEV_ADJ[name] else sev
    if name == "cardiomegaly":
        return [
            (
                w.pick(
                    [
                        f"{adj} cardiomegaly.",
                        f"The heart is {_CARDIO_ADV[sev]} enlarged.",
                        f"{adj} enlargement of the cardiac silhouette.",
                        "Cardiomegaly.",
                        f"The cardiac silhouette is {_CARDIO_ADV[sev]} enlarged.",
                        f"Cardiomegaly, {adj}.",
                    ]
                ),
                (),
            )
        ]
    if name == "pleural effusion":
        if side == "bilateral":
            text = w.pick(
                [
                    f"{adj} bilateral pleural effusions.",
                    f"Bilateral {adj} pleural effusions.",
                    f"{adj} pleural effusions bilaterally.",
                    f"There are {adj} bilateral effusions.",
                    f"{adj} amount of pleural fluid at both bases.",
                ]
            )
        else:
            options = [
                f"{adj} {side} pleural effusion.",
                f"There is a {adj} {side} pleural effusion.",
                f"{adj} {side} effusion.",
                f"{adj} amount of {side} pleural fluid.",
                f"{side} pleural effusion, {adj} in size.",
            ]
            if sev == "small":
                options.append(
                    f"Blunting of the {side} costophrenic angle consistent with a small effusion."
                )
            if sev == "large":
                options.append(
                    f"Large {side} pleural effusion opacifying the {side} lower hemithorax."
                )
            text = w.pick(options)
        return [(text, ())]
    if name == "pneumothorax":
        loc = inst.location or "apical"
        where = "at the apex" if loc == "apical" else "along the apex and lateral chest wall"
        return [
            (
                w.pick(
                    [
                        f"There is a {adj} {side} {loc} pneumothorax.",
                        f"{adj} {side} pneumothorax.",
                        f"{side} {loc} pneumothorax, {adj} in size.",
                        f"A {adj} {side} pneumothorax is present with the visceral pleural line visible {where}.",
                        f"{adj} {side} pneumothorax with absent lung markings peripherally.",
                    ]
                ),
                (),
            )
        ]
    if name == "consolidation":
        bronch = " with air bronchograms" if "air bronchograms" in inst.details else ""
        kind = {
            "mild": w.pick(["patchy ", "focal ", "subtle "]),
            "moderate": "",
            "large": "dense ",
        }[sev]
        if side == "bilateral":
            text = w.pick(
                [
                    f"Bibasilar {kind}consolidation{bronch}.",
                    f"{kind}consolidation at both lung bases{bronch}.",
                    f"Bilateral lower lobe {kind}airspace consolidation{bronch}.",
                ]
            )
        else:
            lobe = _lobe(side, inst.location)
            text = w.pick(
                [
                    f"{kind}consolidation in the {lobe}{bronch}.",
                    f"There is {kind}airspace consolidation in the {lobe}{bronch}.",
                    f"{lobe} {kind}consolidation{bronch}.",
                    f"{kind}airspace opacity in the {_zone(side, inst.location, w)} consistent with consolidation{bronch}.",
                ]
            )
        extra: tuple = ()
        if section == "impression" and w.chance(0.4):
            phrase, status = (
                (", concerning for pneumonia", UNCERTAIN)
                if w.chance(0.6)
                else (", consistent with pneumonia", POSITIVE)
            )
            text = text[:-1] + phrase + "."
            extra = (("Pneumonia", status),)
        return [(text, extra)]
    if name == "atelectasis":
        if inst.location == "upper":
            text = w.pick(
                [
                    f"Collapse of the {side} upper lobe with volume loss.",
                    f"{side} upper lobe atelectasis with elevation of the fissure.",
                    f"Complete atelectasis of the {side} upper lobe.",
                ]
            )
        elif sev == "large":
            text = w.pick(
                [
                    f"{side} lower lobe collapse.",
                    f"Collapse of the {side} lower lobe with volume loss.",
                    f"Retrocardiac opacity consistent with {side} lower lobe atelectasis.",
                ]
            )
        elif side == "bilateral":
            kind = w.pick(["plate-like", "linear", "subsegmental"]) if sev == "mild" else "basilar"
            text = w.pick(
                [f"Bibasilar {kind} atelectasis.", f"{kind} atelectasis at both lung bases."]
            )
        elif sev == "mild":
            kind = w.pick(["plate-like", "linear", "subsegmental", "discoid"])
            text = w.pick(
                [
                    f"{kind} atelectasis at the {side} base.",
                    f"{kind} atelectasis in the {side} lower zone.",
                    f"There is {kind} atelectasis at the {side} lung base.",
                ]
            )
        else:
            text = w.pick(
                [
                    f"Segmental atelectasis at the {side} base with mild volume loss.",
                    f"{side} basilar atelectasis.",
                    f"Streaky {side} basilar opacity consistent with atelectasis.",
                ]
            )
        return [(text, ())]
    if name == "pulmonary edema":
        kerley = " with Kerley B lines" if "Kerley lines" in inst.details else ""
        if sev == "large":
            text = w.pick(
                [
                    f"{adj} pulmonary edema.",
                    "Extensive bilateral perihilar airspace opacities in a bat-wing distribution, consistent with alveolar edema.",
                    f"{adj} bilateral perihilar edema.",
                ]
            )
        else:
            text = w.pick(
                [
                    f"{adj} pulmonary edema{kerley}.",
                    f"{adj} perihilar edema{kerley}.",
                    f"Bilateral perihilar haziness consistent with {adj} pulmonary edema{kerley}.",
                    f"There is {adj} pulmonary edema{kerley}.",
                ]
            )
        return [(text, ())]
    if name == "nodule/mass":
        d = _diameter_cm(inst)
        zone = {"upper": "upper", "mid": "mid", "lower": "lower"}.get(inst.location or "", "mid")
        if sev == "large":
            text = w.pick(
                [
                    f"{d:.1f} cm mass in the {side} {zone} lung.",
                    f"Large {side} {zone} zone lung mass measuring approximately {d:.1f} cm.",
                    f"There is a rounded {d:.1f} cm mass in the {side} {zone} zone.",
                    f"{side} {zone} lung mass.",
                ]
            )
        else:
            text = w.pick(
                [
                    f"{d:.1f} cm nodule in the {side} {zone} zone.",
                    f"There is a {d:.1f} cm round nodule in the {side} {zone} lung.",
                    f"Well-circumscribed {d:.1f} cm pulmonary nodule in the {side} {zone} zone.",
                    f"{side} {zone} lung nodule.",
                ]
            )
        return [(text, ())]
    if name == "enlarged cardiomediastinum":
        return [
            (
                w.pick(
                    [
                        f"The mediastinum is {adj} widened.",
                        f"{adj} widened superior mediastinum.",
                        "Enlarged cardiomediastinal silhouette with widening of the upper mediastinum.",
                        "Widened mediastinum.",
                    ]
                ),
                (),
            )
        ]
    if name == "rib fracture":
        rib = inst.location or "rib"
        rib_n = rib.replace(" rib", "")
        haematoma = (
            " An adjacent extrapleural haematoma is noted."
            if "extrapleural haematoma" in inst.details
            else ""
        )
        return [
            (
                w.pick(
                    [
                        f"Acute fracture of the lateral {side} {rib} with mild displacement.",
                        f"There is a mildly displaced fracture of the {side} {rib} laterally.",
                        f"Displaced {side} {rib_n} rib fracture.",
                        f"Fracture of the {side} {rib} with a small step-off.",
                    ]
                )
                + haematoma,
                (),
            )
        ]
    if name == "support devices":
        return [(_device_sentence(kind, w), ()) for kind in inst.details] or [
            ("Support devices in place.", ())
        ]
    raise ValueError(f"No templates for {name!r}.")


def _device_sentence(kind: str, w: _Writer) -> str:
    options = {
        "endotracheal tube": [
            "Endotracheal tube terminates above the carina.",
            "Endotracheal tube in standard position.",
            "The endotracheal tube tip projects a few centimeters above the carina.",
        ],
        "right internal jugular line": [
            "Right internal jugular central venous catheter with tip in the superior vena cava.",
            "Right internal jugular line terminates in the lower superior vena cava.",
            "Right jugular central line with tip projecting over the superior vena cava.",
        ],
        "left subclavian line": [
            "Left subclavian central venous catheter with tip in the superior vena cava.",
            "Left subclavian line terminates in the superior vena cava.",
        ],
        "pacemaker": [
            "Left chest wall pacemaker with leads in the right atrium and right ventricle.",
            "Dual-chamber pacemaker in place.",
            "Cardiac pacing device with leads terminating in the right atrium and right ventricle.",
        ],
        "nasogastric tube": [
            "Nasogastric tube courses below the diaphragm with tip in the stomach.",
            "Enteric tube tip is in the stomach.",
            "Nasogastric tube in satisfactory position.",
        ],
    }[kind]
    return w.pick(options)


def _uncertain(inst: FindingInstance, w: _Writer, section: str) -> tuple[str, tuple]:
    """Hedged sentence for a present mild/small finding."""
    name, side = inst.name, inst.laterality or ""
    if name == "pleural effusion":
        if side == "bilateral":
            return w.pick(
                [
                    "Possible small bilateral pleural effusions.",
                    "Cannot exclude small bilateral effusions.",
                ]
            ), ()
        return (
            w.pick(
                [
                    f"Possible small {side} pleural effusion.",
                    f"Cannot exclude a small {side} effusion.",
                    f"Blunting of the {side} costophrenic angle may reflect a small effusion.",
                    f"A trace {side} pleural effusion is not excluded.",
                ]
            ),
            (),
        )
    if name == "pneumothorax":
        return (
            w.pick(
                [
                    f"Possible small {side} apical pneumothorax.",
                    f"A tiny {side} apical pneumothorax cannot be excluded.",
                    f"Questionable thin {side} apical pleural line, possibly a small pneumothorax.",
                ]
            ),
            (),
        )
    if name == "consolidation":
        where = "both lung bases" if side == "bilateral" else "the " + _zone(side, inst.location, w)
        text = w.pick(
            [
                f"Possible early consolidation at {where}.",
                f"Subtle opacity at {where} may represent early consolidation.",
                f"Cannot exclude consolidation at {where}.",
            ]
        )
        extra: tuple = ()
        if section == "impression" and w.chance(0.4):
            text = text[:-1] + ", which could represent early pneumonia."
            extra = (("Pneumonia", UNCERTAIN),)
        return text, extra
    if name == "atelectasis":
        where = "both bases" if side == "bilateral" else f"the {side} base"
        return (
            w.pick(
                [
                    f"Linear opacity at {where}, possibly atelectasis.",
                    f"Possible subsegmental atelectasis at {where}.",
                    f"Minimal streaky opacity at {where} may represent atelectasis.",
                ]
            ),
            (),
        )
    if name == "pulmonary edema":
        return (
            w.pick(
                [
                    "Possible mild interstitial edema.",
                    "Questionable mild pulmonary edema.",
                    "Mild perihilar haziness, cannot exclude early pulmonary edema.",
                ]
            ),
            (),
        )
    if name == "nodule/mass":
        zone = inst.location or "mid"
        return (
            w.pick(
                [
                    f"Possible small nodule in the {side} {zone} zone.",
                    f"Cannot exclude a small pulmonary nodule in the {side} {zone} lung.",
                    f"Questionable nodular opacity in the {side} {zone} zone; follow-up is suggested.",
                ]
            ),
            (),
        )
    if name == "cardiomegaly":
        return (
            w.pick(
                [
                    "Borderline enlargement of the cardiac silhouette.",
                    "Possible mild cardiomegaly.",
                    "The heart size is at the upper limits of normal to mildly enlarged.",
                ]
            ),
            (),
        )
    if name == "enlarged cardiomediastinum":
        return (
            w.pick(
                [
                    "Possible mild widening of the mediastinum.",
                    "The mediastinum may be slightly widened.",
                ]
            ),
            (),
        )
    raise ValueError(f"No uncertain templates for {name!r}.")


_HEDGEABLE = frozenset(
    {
        "cardiomegaly",
        "pleural effusion",
        "pneumothorax",
        "consolidation",
        "atelectasis",
        "pulmonary edema",
        "nodule/mass",
        "enlarged cardiomediastinum",
    }
)


# --- negative sentences -----------------------------------------------------------------------

_NEG_SINGLE: Mapping[str, tuple[str, ...]] = {
    "pleural effusion": (
        "No pleural effusion.",
        "No effusion.",
        "There is no pleural effusion.",
        "No pleural fluid.",
        "The costophrenic angles are sharp.",
        "No evidence of pleural effusion.",
    ),
    "pneumothorax": (
        "No pneumothorax.",
        "There is no pneumothorax.",
        "No evidence of pneumothorax.",
        "No pneumothorax is seen.",
    ),
    "consolidation": (
        "No focal consolidation.",
        "No consolidation.",
        "No focal airspace consolidation.",
        "There is no focal consolidation.",
    ),
    "pulmonary edema": (
        "No pulmonary edema.",
        "No edema.",
        "No evidence of pulmonary edema.",
        "Pulmonary vascularity is normal.",
    ),
    "atelectasis": ("No atelectasis.", "No focal atelectasis."),
    "nodule/mass": (
        "No suspicious pulmonary nodules or masses.",
        "No lung nodule or mass.",
        "No focal pulmonary nodule.",
    ),
    "cardiomegaly": (
        "Heart size is normal.",
        "The heart is normal in size.",
        "Normal heart size.",
        "The cardiac silhouette is not enlarged.",
        "No cardiomegaly.",
    ),
    "enlarged cardiomediastinum": (
        "The mediastinal contours are normal.",
        "Normal mediastinal contours.",
        "The mediastinum is not widened.",
        "Mediastinal silhouette is unremarkable.",
    ),
    "rib fracture": (
        "No acute osseous abnormality.",
        "No displaced rib fracture.",
        "The osseous structures are intact.",
        "No acute fracture is identified.",
        "Bony structures are unremarkable.",
    ),
    "support devices": ("No lines or tubes.", "No support devices."),
}

# Combined negatives: (findings, gestalt, templates), tried in order. A group is used only when
# every finding in it is absent and its first finding is due to be mentioned. A *gestalt*
# sentence ("The lungs are clear.") negates its whole group even where the other findings
# would not have been mentioned on their own; a list sentence needs all of them due.
_NEG_COMBINED: tuple[tuple[tuple[str, ...], bool, tuple[str, ...]], ...] = (
    (
        ("consolidation", "pleural effusion", "pneumothorax"),
        False,
        (
            "No focal consolidation, pleural effusion or pneumothorax.",
            "No consolidation, effusion or pneumothorax.",
            "There is no focal consolidation, pleural effusion, or pneumothorax.",
        ),
    ),
    (
        ("pleural effusion", "pneumothorax"),
        False,
        (
            "No pleural effusion or pneumothorax.",
            "No effusion or pneumothorax.",
            "There is no pleural effusion or pneumothorax.",
            "No pneumothorax or pleural effusion.",
        ),
    ),
    (("pleural effusion", "pneumothorax"), True, ("The pleural spaces are clear.",)),
    (
        ("consolidation", "pulmonary edema", "atelectasis", "nodule/mass"),
        True,
        ("The lungs are clear.", "Lungs are clear.", "The lungs are clear bilaterally."),
    ),
    (
        ("consolidation", "pulmonary edema"),
        False,
        ("No consolidation or edema.", "No focal consolidation or pulmonary edema."),
    ),
    (
        ("cardiomegaly", "enlarged cardiomediastinum"),
        True,
        (
            "The cardiomediastinal silhouette is within normal limits.",
            "Normal cardiomediastinal silhouette.",
            "Heart size and mediastinal contours are normal.",
            "The cardiac and mediastinal contours are unremarkable.",
        ),
    ),
)

_NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "No radiographic evidence of acute cardiopulmonary disease.",
)
_REFERRALS = ("Findings as above.", "As above.", "See findings above.")
_VIEWS = (
    "Frontal view of the chest.",
    "Posteroanterior view of the chest.",
    "Single frontal radiograph of the chest.",
)

# Reading order of the findings section.
_ORDER = (
    "support devices",
    "consolidation",
    "pulmonary edema",
    "atelectasis",
    "nodule/mass",
    "pleural effusion",
    "pneumothorax",
    "cardiomegaly",
    "enlarged cardiomediastinum",
    "rib fracture",
)
# Rough clinical priority for the impression.
_IMPRESSION_ORDER = (
    "pneumothorax",
    "nodule/mass",
    "consolidation",
    "pulmonary edema",
    "pleural effusion",
    "enlarged cardiomediastinum",
    "cardiomegaly",
    "atelectasis",
    "rib fracture",
    "support devices",
)


def generate_report(phantom: Phantom, rng_or_seed: np.random.Generator | int) -> Report:
    """Write a radiology-style report for a phantom.

    Args:
        phantom: The rendered phantom (its findings are the truth).
        rng_or_seed: A numpy Generator, or an integer seed (same seed -> same report).

    Returns:
        A :class:`Report` whose labels agree with ``phantom.labels()`` wherever the report
        mentions a finding.
    """
    rng = (
        rng_or_seed
        if isinstance(rng_or_seed, np.random.Generator)
        else np.random.default_rng(rng_or_seed)
    )
    w = _Writer(rng)
    present = {f.name: f for f in phantom.findings}
    status = {
        name: UNCERTAIN
        if name in _HEDGEABLE and inst.severity in MILD_SEVERITIES and w.chance(UNCERTAIN_FRACTION)
        else POSITIVE
        for name, inst in present.items()
    }

    # Findings section: one block per finding in reading order; absent ones maybe negated.
    mention_neg = {
        name for name in PHANTOM_FINDINGS if name not in present and w.chance(MENTION_ABSENT[name])
    }
    if len(mention_neg) + len(present) < 3:  # keep a minimum of content
        for name in ("pleural effusion", "pneumothorax", "cardiomegaly", "consolidation"):
            if name not in present:
                mention_neg.add(name)
    absent = set(PHANTOM_FINDINGS) - set(present)
    negatives = _negative_sentences(mention_neg, absent, w)
    mention_neg = {f for s in negatives for f in s.findings}
    blocks: list[tuple[int, ReportSentence]] = []
    for name, inst in present.items():
        if status[name] == UNCERTAIN:
            text, extra = _uncertain(inst, w, "findings")
            sents = [(text, extra)]
        else:
            sents = _positive(inst, w, "findings")
        for text, extra in sents:
            sentence = ReportSentence(_clean(text), "findings", (name,), status[name], extra)
            blocks.append((_ORDER.index(name), sentence))
    for sentence in negatives:
        blocks.append((min(_ORDER.index(f) for f in sentence.findings), sentence))
    # Stable order with a little shuffling of neighbours, as reports vary.
    jitter = rng.uniform(-0.6, 0.6, size=len(blocks))
    order = np.argsort([k + j for (k, _), j in zip(blocks, jitter, strict=True)], kind="stable")
    findings_part = [blocks[i][1] for i in order]
    if w.chance(0.2):
        findings_part.insert(0, ReportSentence(w.pick(_VIEWS), "findings", (), NEGATIVE))

    # Impression.
    impression: list[ReportSentence] = []
    pathology = [n for n in _IMPRESSION_ORDER if n in present and n in PATHOLOGY_FINDINGS]
    if not pathology:
        if "support devices" in present and w.chance(0.5):
            for text, extra in _positive(present["support devices"], w, "impression"):
                impression.append(
                    ReportSentence(
                        _clean(text), "impression", ("support devices",), POSITIVE, extra
                    )
                )
        impression.append(ReportSentence(w.pick(_NORMAL_IMPRESSIONS), "impression", (), NEGATIVE))
    elif w.chance(0.12):
        impression.append(ReportSentence(w.pick(_REFERRALS), "impression", (), NEGATIVE))
    else:
        for name in pathology:
            inst = present[name]
            if status[name] == UNCERTAIN:
                text, extra = _uncertain(inst, w, "impression")
            else:
                text, extra = _positive(inst, w, "impression")[0]
            impression.append(
                ReportSentence(_clean(text), "impression", (name,), status[name], extra)
            )
        if "consolidation" not in present and "consolidation" in mention_neg and w.chance(0.15):
            impression.append(
                ReportSentence(
                    "No evidence of pneumonia.",
                    "impression",
                    ("consolidation",),
                    NEGATIVE,
                    (("Pneumonia", NEGATIVE),),
                )
            )
    return Report(sentences=tuple(findings_part + impression), referral=w.pick(_REFERRALS))


def _negative_sentences(names: set[str], absent: set[str], w: _Writer) -> list[ReportSentence]:
    """Negative sentences covering every name in ``names`` (combined where it reads well).

    Args:
        names: Absent findings due to be mentioned.
        absent: All absent findings (gestalt sentences may cover more than ``names``).
        w: Template picker.
    """
    left = set(names)
    covered: set[str] = set()
    out = []
    for group, gestalt, templates in _NEG_COMBINED:
        members = set(group)
        usable = (
            members <= absent
            and group[0] in left
            and not members & covered
            and (gestalt or members <= left)
        )
        if usable and w.chance(0.5):
            out.append(ReportSentence(w.pick(templates), "findings", group, NEGATIVE))
            left -= members
            covered |= members
    for name in PHANTOM_FINDINGS:
        if name in left:
            out.append(ReportSentence(w.pick(_NEG_SINGLE[name]), "findings", (name,), NEGATIVE))
    return out

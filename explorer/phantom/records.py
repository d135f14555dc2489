"""Result records and vocabulary of the phantom world.

Laterality is always the *patient's* side. Images are displayed like a PA radiograph, so the
patient's right is on the image's left and the patient's left on the image's right.

Label mapping from phantom findings to the 14 CheXpert observations
(:data:`explorer.vocab.labels.CHEXPERT_FINDINGS`), used by :meth:`Phantom.labels` and by the
report labels:

======================================  ==========================
phantom finding                         CheXpert observation
======================================  ==========================
cardiomegaly                            Cardiomegaly
pleural effusion                        Pleural Effusion
pneumothorax                            Pneumothorax
consolidation                           Consolidation
atelectasis                             Atelectasis
pulmonary edema                         Edema
nodule/mass                             Lung Lesion
enlarged cardiomediastinum              Enlarged Cardiomediastinum
rib fracture                            Fracture
support devices                         Support Devices
any of consolidation, atelectasis,      Lung Opacity
pulmonary edema, nodule/mass
no pathology (devices do not count)     No Finding
(nothing)                               Pneumonia, Pleural Other: left to the report
======================================  ==========================

The phantom knows the truth, so an absent finding is NEGATIVE in :meth:`Phantom.labels`;
which findings a report *mentions* is decided by :mod:`explorer.phantom.reports`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from explorer.vocab.labels import CHEXPERT_FINDINGS, NEGATIVE, POSITIVE, canonical_finding

#: Canonical names of the findings the phantom world can show.
PHANTOM_FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "pleural effusion",
    "pneumothorax",
    "consolidation",
    "atelectasis",
    "pulmonary edema",
    "nodule/mass",
    "enlarged cardiomediastinum",
    "rib fracture",
    "support devices",
)

#: Findings that are pathology (everything except support devices).
PATHOLOGY_FINDINGS: tuple[str, ...] = tuple(f for f in PHANTOM_FINDINGS if f != "support devices")

#: Phantom finding -> CheXpert observation (see the module docstring).
CHEXPERT_MAPPING: Mapping[str, str] = {
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "atelectasis": "Atelectasis",
    "pulmonary edema": "Edema",
    "nodule/mass": "Lung Lesion",
    "enlarged cardiomediastinum": "Enlarged Cardiomediastinum",
    "rib fracture": "Fracture",
    "support devices": "Support Devices",
}

#: Findings whose presence makes the CheXpert "Lung Opacity" observation positive.
OPACITY_FINDINGS: tuple[str, ...] = (
    "consolidation",
    "atelectasis",
    "pulmonary edema",
    "nodule/mass",
)


def phantom_findings_for(observation: str) -> tuple[str, ...]:
    """The phantom findings whose presence makes a CheXpert observation positive.

    Read from :data:`CHEXPERT_MAPPING` and, for "Lung Opacity", :data:`OPACITY_FINDINGS` (the
    mapping of :meth:`Phantom.labels`). A phantom finding's own name stands for itself.

    Args:
        observation: A CheXpert name (case, underscores and hyphens ignored, e.g. "Edema",
            "lung_lesion") or a phantom finding name (e.g. "rib fracture").

    Returns:
        Phantom finding names in :data:`PHANTOM_FINDINGS` order; empty for "No Finding",
        Pneumonia, Pleural Other and anything else the phantom world cannot show.
    """
    name = observation.strip().lower()
    if name in PHANTOM_FINDINGS:
        return (name,)
    chexpert = canonical_finding(observation)
    if chexpert is None:
        return ()
    if chexpert == "Lung Opacity":
        return tuple(f for f in PHANTOM_FINDINGS if f in OPACITY_FINDINGS)
    return tuple(f for f in PHANTOM_FINDINGS if CHEXPERT_MAPPING.get(f) == chexpert)


#: Allowed lateralities per finding (``None`` = laterality does not apply).
LATERALITIES: Mapping[str, tuple[str | None, ...]] = {
    "cardiomegaly": (None,),
    "pleural effusion": ("left", "right", "bilateral"),
    "pneumothorax": ("left", "right"),
    "consolidation": ("left", "right", "bilateral"),
    "atelectasis": ("left", "right", "bilateral"),
    "pulmonary edema": ("bilateral",),
    "nodule/mass": ("left", "right"),
    "enlarged cardiomediastinum": (None,),
    "rib fracture": ("left", "right"),
    "support devices": (None,),
}

#: Allowed severities per finding (``None`` = severity does not apply). For nodule/mass,
#: ``"small"`` is a nodule (< 3 cm) and ``"large"`` a mass.
SEVERITIES: Mapping[str, tuple[str | None, ...]] = {
    "cardiomegaly": ("mild", "moderate", "large"),
    "pleural effusion": ("small", "moderate", "large"),
    "pneumothorax": ("small", "moderate", "large"),
    "consolidation": ("mild", "moderate", "large"),
    "atelectasis": ("mild", "moderate", "large"),
    "pulmonary edema": ("mild", "moderate", "large"),
    "nodule/mass": ("small", "large"),
    "enlarged cardiomediastinum": ("mild", "moderate", "large"),
    "rib fracture": (None,),
    "support devices": (None,),
}

#: Device kinds drawn for "support devices" (``FindingInstance.details``).
DEVICE_KINDS: tuple[str, ...] = (
    "endotracheal tube",
    "right internal jugular line",
    "left subclavian line",
    "pacemaker",
    "nasogastric tube",
)

#: The mildest severity of each finding (used for "mild" hedging in reports).
MILD_SEVERITIES: frozenset[str] = frozenset({"mild", "small"})


@dataclass(frozen=True)
class FindingSpec:
    """A finding to force into a phantom; unset attributes are sampled.

    Attributes:
        name: One of :data:`PHANTOM_FINDINGS`.
        laterality: ``"left"``, ``"right"``, ``"bilateral"`` or ``None`` (sample / not
            applicable); must be allowed by :data:`LATERALITIES`.
        severity: A value from :data:`SEVERITIES` or ``None`` (sample / not applicable).
        details: For support devices, the device kinds to draw (from :data:`DEVICE_KINDS`);
            empty = sample.
    """

    name: str
    laterality: str | None = None
    severity: str | None = None
    details: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in PHANTOM_FINDINGS:
            raise ValueError(
                f"Unknown phantom finding {self.name!r}; expected one of {PHANTOM_FINDINGS}."
            )
        if self.laterality is not None and self.laterality not in LATERALITIES[self.name]:
            raise ValueError(
                f"Laterality {self.laterality!r} is not allowed for {self.name!r}; "
                f"allowed: {LATERALITIES[self.name]}."
            )
        if self.severity is not None and self.severity not in SEVERITIES[self.name]:
            raise ValueError(
                f"Severity {self.severity!r} is not allowed for {self.name!r}; "
                f"allowed: {SEVERITIES[self.name]}."
            )
        bad = [d for d in self.details if d not in DEVICE_KINDS]
        if bad or (self.details and self.name != "support devices"):
            raise ValueError(f"Details {self.details!r} are not device kinds of 'support devices'.")


@dataclass(frozen=True, eq=False)
class FindingInstance:
    """A finding present in a rendered phantom.

    Attributes:
        name: One of :data:`PHANTOM_FINDINGS`.
        laterality: Patient side (``"left"``/``"right"``/``"bilateral"``) or ``None``.
        severity: Severity word from :data:`SEVERITIES` or ``None``.
        mask: Read-only boolean array (H, W), True where the sign is visible.
        location: Short anatomical phrase (e.g. ``"lower"`` zone, ``"apical"``, ``"6th rib"``)
            or ``None``.
        details: Extra descriptors, e.g. ``("air bronchograms",)``, ``("Kerley lines",)`` or the
            device kinds of support devices.
    """

    name: str
    laterality: str | None
    severity: str | None
    mask: np.ndarray
    location: str | None = None
    details: tuple[str, ...] = ()

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return int(self.mask.sum())


@dataclass(frozen=True)
class PhantomParams:
    """Sampled anatomy and acquisition parameters of one phantom, plus measured ratios.

    Geometry is in image units (the image spans [-1, 1] in both directions) unless noted.
    Values are those rendered, i.e. after findings changed them (an enlarged heart, a
    hemidiaphragm raised by volume loss).

    Attributes:
        center_x: Horizontal shift of the thorax.
        center_y: Vertical shift of the thorax.
        tilt_deg: In-plane rotation (degrees, positive = clockwise on the display).
        half_width: Half-width of the inner thoracic cage (body habitus).
        apex_level: Height of the lung apices.
        diaphragm_right: Height of the right hemidiaphragm dome (larger = lower = deeper
            inspiration).
        diaphragm_left: Height of the left hemidiaphragm dome (normally below the right).
        target_ctr: Cardiothoracic ratio the heart was sized for (after findings).
        mediastinum_scale: Width factor of the upper mediastinum.
        soft_tissue: Soft-tissue thickness factor (habitus).
        breast_shadows: Whether breast shadows are drawn.
        gastric_bubble: Whether a gastric air bubble is drawn under the left hemidiaphragm.
        contrast: Display contrast factor.
        brightness: Display brightness offset.
        gamma: Display gamma.
        noise_sigma: Quantum-like noise amplitude (display units).
        blur_sigma: Detector blur in pixels at 224 px (scaled with the size).
        cardiothoracic_ratio: Heart width / inner thoracic width, measured on the rendered
            heart silhouette.
        thoracic_width_px: Inner thoracic width in pixels.
        heart_width_px: Heart silhouette width in pixels.
    """

    center_x: float
    center_y: float
    tilt_deg: float
    half_width: float
    apex_level: float
    diaphragm_right: float
    diaphragm_left: float
    target_ctr: float
    mediastinum_scale: float
    soft_tissue: float
    breast_shadows: bool
    gastric_bubble: bool
    contrast: float
    brightness: float
    gamma: float
    noise_sigma: float
    blur_sigma: float
    cardiothoracic_ratio: float = 0.0
    thoracic_width_px: float = 0.0
    heart_width_px: float = 0.0


@dataclass(frozen=True, eq=False)
class Phantom:
    """A rendered phantom chest radiograph with ground truth.

    Attributes:
        image: Read-only float32 array (H, W) in [0, 1]; dense = bright.
        findings: The findings present, in :data:`PHANTOM_FINDINGS` order.
        seed: The seed it was rendered from.
        params: Sampled anatomy/acquisition parameters.
        heart_mask: Read-only boolean mask of the cardiac silhouette (present in every case,
            also when there is no cardiomegaly; handy for measuring the CTR).
    """

    image: np.ndarray
    findings: tuple[FindingInstance, ...]
    seed: int
    params: PhantomParams
    heart_mask: np.ndarray = field(repr=False)

    @property
    def size(self) -> int:
        """Image side in pixels."""
        return int(self.image.shape[0])

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the findings present."""
        return tuple(f.name for f in self.findings)

    @property
    def is_normal(self) -> bool:
        """True when no pathology is present (support devices do not count)."""
        return not any(f.name in PATHOLOGY_FINDINGS for f in self.findings)

    def finding(self, name: str) -> FindingInstance | None:
        """The instance of finding ``name``, or ``None`` when absent."""
        if name not in PHANTOM_FINDINGS:
            raise ValueError(f"Unknown phantom finding {name!r}.")
        return next((f for f in self.findings if f.name == name), None)

    def mask_for(self, observation: str) -> np.ndarray | None:
        """The ground-truth mask of a CheXpert observation in this phantom, or ``None``.

        The union of the masks of the phantom findings present that make ``observation``
        positive (:func:`phantom_findings_for`); ``None`` when none of them is present.

        Args:
            observation: A CheXpert name or a phantom finding name.
        """
        wanted = set(phantom_findings_for(observation))
        masks = [f.mask for f in self.findings if f.name in wanted]
        return np.any(masks, axis=0) if masks else None

    def labels(self) -> dict[str, int | None]:
        """Ground-truth CheXpert labels (see the module docstring for the mapping).

        Returns:
            Dict over :data:`explorer.vocab.labels.CHEXPERT_FINDINGS`: ``POSITIVE`` / ``NEGATIVE``,
            and ``None`` for Pneumonia and Pleural Other (left to the report).
        """
        present = set(self.names)
        out: dict[str, int | None] = {name: NEGATIVE for name in CHEXPERT_FINDINGS}
        for finding, chexpert in CHEXPERT_MAPPING.items():
            if finding in present:
                out[chexpert] = POSITIVE
        if present & set(OPACITY_FINDINGS):
            out["Lung Opacity"] = POSITIVE
        out["No Finding"] = POSITIVE if self.is_normal else NEGATIVE
        out["Pneumonia"] = None
        out["Pleural Other"] = None
        return out

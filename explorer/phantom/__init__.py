"""Phantom world: seeded synthetic chest radiographs with ground-truth findings and reports.

The project cannot download a pretrained medical CLIP model, so it trains its own default
model on this controlled world: every phantom image has the findings it shows (with
laterality, severity and a pixel mask) and a radiology-style report.

Public API:

* :func:`render_phantom` - render a seeded :class:`Phantom` (image, findings, masks, labels).
* :class:`FindingSpec` - force a finding (optionally its laterality/severity) into a phantom.
* :func:`generate_report` - write a :class:`Report` (FINDINGS / IMPRESSION sentences with
  per-sentence finding status and CheXpert labels) for a phantom.
* :data:`PHANTOM_FINDINGS` and :data:`CHEXPERT_MAPPING` - vocabulary and label mapping;
  :func:`phantom_findings_for` - the phantom findings behind a CheXpert observation (and
  :meth:`Phantom.mask_for` their mask).
* :func:`shipped_phantom` - the phantom a shipped example image was rendered from.
* :func:`render_timing` - render-time table (``python -m explorer.phantom``); contact sheets with
  ``python -m explorer.phantom.sheet OUT.png``.

Sets and splits (import the modules themselves): :mod:`explorer.phantom.splits` holds the seed
ranges (training, held-out benchmark, phantom batches); :mod:`explorer.phantom.sets` renders and
caches a :class:`~explorer.phantom.sets.PhantomSet` and holds the report edits (flip a
finding, join sentences) that training and the negation benchmark share.

Laterality is the patient's side: the patient's right is on the left of the displayed image.
"""

from explorer.phantom.examples import seeded_phantom, shipped_phantom, shipped_phantoms
from explorer.phantom.records import (
    CHEXPERT_MAPPING,
    DEVICE_KINDS,
    LATERALITIES,
    OPACITY_FINDINGS,
    PATHOLOGY_FINDINGS,
    PHANTOM_FINDINGS,
    SEVERITIES,
    FindingInstance,
    FindingSpec,
    Phantom,
    PhantomParams,
    phantom_findings_for,
)
from explorer.phantom.renderer import render_phantom, render_timing, sample_findings
from explorer.phantom.reports import Report, ReportSentence, generate_report

__all__ = [
    "CHEXPERT_MAPPING",
    "DEVICE_KINDS",
    "LATERALITIES",
    "OPACITY_FINDINGS",
    "PATHOLOGY_FINDINGS",
    "PHANTOM_FINDINGS",
    "SEVERITIES",
    "FindingInstance",
    "FindingSpec",
    "Phantom",
    "PhantomParams",
    "Report",
    "ReportSentence",
    "phantom_findings_for",
    "render_timing",
    "generate_report",
    "render_phantom",
    "sample_findings",
    "seeded_phantom",
    "shipped_phantom",
    "shipped_phantoms",
]

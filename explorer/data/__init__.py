"""Labelled image manifests: real radiographs with their labels, reports, patients and boxes.

:mod:`explorer.data.manifest` holds the records every reader returns (:class:`Manifest`,
:class:`ManifestRow`, :class:`Box`, :class:`ManifestProblem`). The readers live beside them:
:mod:`~explorer.data.table` (CSV / TSV / Parquet tables in CheXpert or NIH naming; also the
batch reader's CSV parser), :mod:`~explorer.data.cxr_align` (the CXR-Align JSON with a
MIMIC-CXR-JPG root), :mod:`~explorer.data.splits` (seeded patient-level splits) and
:mod:`~explorer.data.named` (the shipped ``nih-test`` set and the NIH training side);
:mod:`~explorer.data.nih_test` remakes ``assets/nih-test/``.
"""

from explorer.data.cxr_align import read_cxr_align
from explorer.data.manifest import Box, Manifest, ManifestProblem, ManifestRow
from explorer.data.named import named_manifest, nih_test_patients, nih_train_manifest
from explorer.data.splits import patient_split
from explorer.data.table import ManifestError, read_manifest

__all__ = [
    "Box",
    "Manifest",
    "ManifestError",
    "ManifestProblem",
    "ManifestRow",
    "named_manifest",
    "nih_test_patients",
    "nih_train_manifest",
    "patient_split",
    "read_cxr_align",
    "read_manifest",
]

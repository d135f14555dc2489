"""Labelled image manifests: real radiographs with their labels, reports, patients and boxes.

:mod:`explorer.data.manifest` holds the records every reader returns (:class:`Manifest`,
:class:`ManifestRow`, :class:`Box`, :class:`ManifestProblem`). The readers live beside them:
:mod:`~explorer.data.table` (CSV / TSV / Parquet tables in CheXpert or NIH naming; also the
batch reader's CSV parser), :mod:`~explorer.data.cxr_align` (the CXR-Align JSON with a
MIMIC-CXR-JPG root), :mod:`~explorer.data.splits` (seeded patient-level splits) and
:mod:`~explorer.data.named` (the shipped ``nih-test`` set and the NIH training side);
:mod:`~explorer.data.nih_test` remakes ``assets/nih-test/``.
"""

from pathlib import Path

from explorer.data.cxr_align import read_cxr_align
from explorer.data.manifest import Box, Manifest, ManifestProblem, ManifestRow
from explorer.data.named import named_manifest, nih_test_patients, nih_train_manifest
from explorer.data.splits import patient_split
from explorer.data.table import ManifestError, read_manifest


def open_manifest(spec: str | Path, images_root: str | Path | None = None) -> Manifest:
    """What a ``--manifest`` option names: a CXR-Align JSON (needs ``images_root``), a label
    table (CSV / TSV / Parquet), or a named manifest such as ``nih-test``.

    Raises:
        ManifestError: The file does not exist, is not a manifest, or a JSON has no images root.
    """
    path = Path(spec)
    if path.suffix.lower() == ".json" and path.exists():
        if images_root is None:
            raise ManifestError(
                f"{path.name} is a CXR-Align file: give the MIMIC-CXR-JPG folder with --images-root."
            )
        return read_cxr_align(path, images_root)
    return read_manifest(spec, images_root)


__all__ = [
    "open_manifest",
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

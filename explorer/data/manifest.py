"""The records of a labelled image manifest (what every manifest reader returns).

A manifest is a table of images on disk, one row each, with labels over the CheXpert findings
(and the extra NIH findings, :data:`explorer.vocab.labels.EXTRA_FINDINGS`), and optionally the
report text, the patient, the view and expert boxes. Rows keep *paths*, never pixels: images are
read one at a time when they are used (:meth:`ManifestRow.pixels`), so a manifest of any size
streams from disk.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Box:
    """An expert bounding box of one finding, in pixels of the image as stored on disk.

    Attributes:
        finding: The CheXpert (or extra) finding the box marks.
        x, y: Top-left corner (column, row).
        w, h: Width and height.
    """

    finding: str
    x: float
    y: float
    w: float
    h: float

    def mask(
        self, shape: tuple[int, int], image_shape: tuple[int, int] | None = None
    ) -> np.ndarray:
        """A boolean mask of the box on a grid of ``shape`` (rows, cols).

        ``image_shape`` is the (rows, cols) the box coordinates refer to (default: ``shape``);
        the box is scaled from it onto ``shape``.
        """
        rows, cols = shape
        src_rows, src_cols = image_shape or shape
        sy, sx = rows / src_rows, cols / src_cols
        top, left = int(np.floor(self.y * sy)), int(np.floor(self.x * sx))
        bottom = int(np.ceil((self.y + self.h) * sy))
        right = int(np.ceil((self.x + self.w) * sx))
        out = np.zeros(shape, dtype=bool)
        out[max(0, top) : min(rows, bottom), max(0, left) : min(cols, right)] = True
        return out


@dataclass(frozen=True)
class ManifestRow:
    """One image of a manifest.

    Attributes:
        key: A unique name of the row (the file path as written in the table).
        path: Where the image is on disk.
        labels: Finding -> ``1`` / ``0`` / ``-1`` (CheXpert values) or ``None`` (not stated),
            over CheXpert names and extra findings.
        patient_id: The patient, for patient-level splits and bootstrap (``None`` if unknown:
            then each row counts as its own patient).
        report: The report text, if the manifest has one.
        view: The view position ("PA", "AP", "LATERAL"...), if known.
        boxes: Expert boxes, if any.
        extra: Other columns kept as text (e.g. a CXR-Align row's negated and omitted reports).
    """

    key: str
    path: Path
    labels: Mapping[str, int | None]
    patient_id: str | None = None
    report: str | None = None
    view: str | None = None
    boxes: tuple[Box, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def patient(self) -> str:
        """The patient id, or the row's key when the patient is unknown."""
        return self.patient_id if self.patient_id is not None else self.key

    def pixels(self) -> np.ndarray:
        """The image as grayscale float32 in [0, 1] (read from disk now, not kept)."""
        from explorer.imaging import load_radiograph

        return load_radiograph(self.path).pixels


@dataclass(frozen=True)
class ManifestProblem:
    """A row that could not be used, and why (one plain sentence)."""

    row: str
    reason: str


@dataclass(frozen=True, eq=False)
class Manifest:
    """The usable rows of a manifest and the problems of the others.

    Attributes:
        name: What the manifest is called in tables (its file name or registered name).
        rows: The usable rows, in table order.
        problems: Rows that were skipped, each with its reason.
        findings: The findings the manifest labels (CheXpert names first, then extras), in
            column order.
    """

    name: str
    rows: tuple[ManifestRow, ...]
    problems: tuple[ManifestProblem, ...] = ()
    findings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def label_matrix(self, findings: tuple[str, ...] | None = None) -> np.ndarray:
        """Labels as float32 ``[n, k]`` over ``findings`` (default: :attr:`findings`); NaN = blank."""
        cols = self.findings if findings is None else findings
        out = np.full((len(self.rows), len(cols)), np.nan, dtype=np.float32)
        for i, row in enumerate(self.rows):
            for j, f in enumerate(cols):
                v = row.labels.get(f)
                if v is not None:
                    out[i, j] = v
        return out

    def patients(self) -> tuple[str, ...]:
        """The patient of each row (the row's key where unknown)."""
        return tuple(r.patient for r in self.rows)

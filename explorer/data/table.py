"""The one reader of labelled image tables (CSV / TSV / Parquet) -> :class:`Manifest`.

A table has a column naming each image file, label columns in CheXpert naming (``Pleural
Effusion``: 1 / 0 / -1 / blank, also written 1.0 / 0.0 / -1.0) or NIH ChestX-ray14 naming
(``Effusion``: 0 / 1, mapped by :data:`explorer.vocab.labels.NIH_TO_FINDING`), and optionally a
report text, the patient, the view and expert boxes written as the NIH README writes them
(``boxes_xywh``: ``Finding:x y w h`` in pixels of the image as stored, ``|``-separated). NIH's
own ``Data_Entry`` layout (``Image Index`` + ``Finding Labels`` as ``Effusion|Mass``) reads too.

Every row is checked and a bad one is listed with its reason (no file name, no image at the
path, an unreadable image, a label value that is not 1 / 0 / -1 / blank, the same file twice, a
box that does not parse or lies outside the image); the other rows are used. Rows keep paths;
images are read when used (:meth:`ManifestRow.pixels`), so a table of any size streams.

How an image is checked (``check``): ``"header"`` (default) opens the file's header and, for
PNG, verifies its chunks without decoding (Pillow ``verify``; about 1 ms a film), which catches
a missing, empty, non-image or truncated PNG and gives the size the boxes are checked against;
``"decode"`` decodes every image as the scorer will (:func:`explorer.imaging.load_radiograph`;
a few seconds for 1,285 films); ``"exists"`` only checks that the file is there.
:func:`parse_label_table` is the label-table parser without any file checks: the batch reader
(:mod:`explorer.eval.batch`) uses it for its CSV.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explorer.data.manifest import Box, Manifest, ManifestProblem, ManifestRow
from explorer.errors import ExplorerError
from explorer.vocab.labels import (
    CHEXPERT_FINDINGS,
    KNOWN_FINDINGS,
    NIH_TO_FINDING,
    known_finding,
)

log = logging.getLogger(__name__)

#: Column names guessed for the image file, in order (case, spaces and underscores ignored).
FILE_COLUMNS = ("file", "filename", "file_name", "image", "path", "Image Index", "name", "image_id")
PATIENT_COLUMNS = ("patient_id", "Patient ID", "patient", "subject_id")
VIEW_COLUMNS = ("view", "View Position", "ViewPosition", "projection")
REPORT_COLUMNS = ("report", "report_text", "text")
BOX_COLUMNS = ("boxes_xywh", "boxes")
#: NIH's ``Data_Entry_2017.csv`` column listing the findings of a film, ``|``-separated.
NIH_FINDING_LIST_COLUMN = "Finding Labels"
#: NIH's box list (``BBox_List_2017.csv``) spells Infiltration "Infiltrate".
NIH_BOX_ALIASES = {"Infiltrate": "Infiltration"}
CHECKS = ("header", "decode", "exists")
NAMINGS = ("auto", "chexpert", "nih")


class ManifestError(ExplorerError):
    """A table that cannot be read at all (no file, damaged, no file column, no label column)."""


def _norm(name: object) -> str:
    return re.sub(r"[\s_]+", " ", str(name)).strip().lower()


def _find_column(columns: Sequence[str], wanted: str | None, guesses: Sequence[str]) -> str | None:
    by_norm = {_norm(c): c for c in columns}
    if wanted is not None:
        found = by_norm.get(_norm(wanted))
        if found is None:
            raise ManifestError(f"The table has no column '{wanted}'.")
        return found
    return next((by_norm[_norm(g)] for g in guesses if _norm(g) in by_norm), None)


@dataclass(frozen=True)
class LabelColumns:
    """Which columns carry labels, and in which naming.

    Attributes:
        naming: ``"chexpert"`` or ``"nih"``.
        columns: Finding -> the columns whose values decide it (one in CheXpert naming; one or
            more in NIH naming: Nodule and Mass both decide Lung Lesion).
        finding_list: The NIH ``Finding Labels`` column, when the labels are written that way.
    """

    naming: str
    columns: Mapping[str, tuple[str, ...]]
    finding_list: str | None = None

    @property
    def findings(self) -> tuple[str, ...]:
        """The labelled findings, CheXpert names first, then extras."""
        have = set(self.columns)
        return tuple(f for f in KNOWN_FINDINGS if f in have)

    @property
    def used(self) -> frozenset[str]:
        """Every column read as a label."""
        cols = {c for cs in self.columns.values() for c in cs}
        return frozenset(cols | ({self.finding_list} if self.finding_list else set()))


def label_columns(columns: Sequence[str], naming: str = "auto") -> LabelColumns:
    """The label columns of a table in CheXpert or NIH naming (``naming="auto"`` decides).

    Auto: NIH naming when a column has an NIH-only name (Effusion, Infiltration, Mass, Nodule,
    Pleural_Thickening) and none has a CheXpert-only name (Pleural Effusion, Lung Opacity...).
    A table with no label columns but NIH's ``Finding Labels`` column reads that column.
    """
    if naming not in NAMINGS:
        raise ManifestError(f"naming must be one of {', '.join(NAMINGS)}; got '{naming}'.")
    by_norm = {_norm(c): c for c in columns}
    chexpert = {f: (by_norm[_norm(f)],) for f in KNOWN_FINDINGS if _norm(f) in by_norm}
    nih: dict[str, tuple[str, ...]] = {}
    for nih_name, finding in NIH_TO_FINDING.items():
        if _norm(nih_name) in by_norm:
            nih[finding] = (*nih.get(finding, ()), by_norm[_norm(nih_name)])
    nih_only = {_norm(n) for n, f in NIH_TO_FINDING.items() if _norm(n) != _norm(f)}
    chexpert_only = {_norm(f) for f in CHEXPERT_FINDINGS} - {_norm(n) for n in NIH_TO_FINDING}
    if naming == "auto":
        names = set(by_norm)
        naming = "nih" if names & nih_only and not names & chexpert_only else "chexpert"
    picked = nih if naming == "nih" else chexpert
    if not picked and _norm(NIH_FINDING_LIST_COLUMN) in by_norm:
        all_nih = {f: () for f in dict.fromkeys(NIH_TO_FINDING.values())}
        return LabelColumns("nih", all_nih, by_norm[_norm(NIH_FINDING_LIST_COLUMN)])
    return LabelColumns(naming, picked)


@dataclass(frozen=True)
class TableRow:
    """One row of a label table that parsed (before any file checks).

    Attributes:
        where: How the row is named in problems (``"labels.csv row 4"``; row 1 is the header).
        file: The file name or path as written.
        labels: Finding -> 1 / 0 / -1 / None.
        patient_id, report, view: As written (None when blank or absent).
        boxes: Parsed boxes (finding names mapped to CheXpert or extra findings).
        extra: The other non-blank columns, as text.
    """

    where: str
    file: str
    labels: Mapping[str, int | None]
    patient_id: str | None = None
    report: str | None = None
    view: str | None = None
    boxes: tuple[Box, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class LabelTable:
    """A parsed label table: rows that parsed, problems of the others, its label columns."""

    name: str
    rows: tuple[TableRow, ...]
    problems: tuple[ManifestProblem, ...]
    labels: LabelColumns


def read_frame(table: str | Path, what: str = "table"):
    """A CSV / TSV / Parquet file as a pandas DataFrame of strings (blank = "").

    Raises:
        ManifestError: The file is missing or cannot be read.
    """
    import pandas as pd

    path = Path(table)
    if not path.is_file():
        raise ManifestError(f"No {what} at {path}.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path).astype(object)
            frame = frame.where(frame.notna(), "").astype(str)
        else:
            sep = "\t" if suffix in (".tsv", ".tab") else ","
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except Exception as err:  # pandas / pyarrow raise many types for damaged files
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise ManifestError(
            f"{path.name} could not be read as {kind} ({type(err).__name__})."
        ) from None
    return frame


def _parse_value(raw: str, naming: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    v = float(raw)  # ValueError for words
    allowed = (1.0, 0.0) if naming == "nih" else (1.0, 0.0, -1.0)
    if v not in allowed:
        raise ValueError(raw)
    return int(v)


def nih_finding(name: str) -> str | None:
    """An NIH, CheXpert or extra finding name -> its CheXpert (or extra) finding, else None."""
    name = NIH_BOX_ALIASES.get(name.strip(), name.strip())
    by_norm = {_norm(k): v for k, v in NIH_TO_FINDING.items()}
    return by_norm.get(_norm(name)) or known_finding(name)


def parse_boxes(text: str) -> tuple[Box, ...]:
    """``"Finding:x y w h|..."`` (NIH README) -> boxes; ``ValueError`` with a plain reason."""
    boxes = []
    for part in (p.strip() for p in text.split("|")):
        if not part:
            continue
        name, sep, coords = part.rpartition(":")
        finding = nih_finding(name) if sep else None
        if finding is None:
            raise ValueError(f"box '{part[:40]}' does not name a known finding")
        try:
            x, y, w, h = (float(v) for v in coords.replace(",", " ").split())
        except ValueError:
            raise ValueError(f"box '{part[:40]}' is not 'Finding:x y w h'") from None
        if not all(np.isfinite((x, y, w, h))) or w <= 0 or h <= 0 or x < 0 or y < 0:
            raise ValueError(f"box '{part[:40]}' has a negative corner or an empty size")
        boxes.append(Box(finding, x, y, w, h))
    return tuple(boxes)


def _row_labels(rec: Mapping[str, str], cols: LabelColumns) -> dict[str, int | None]:
    labels: dict[str, int | None] = {}
    if cols.finding_list:
        listed = {nih_finding(n) for n in str(rec[cols.finding_list]).split("|") if n.strip()}
        if None in listed:
            raise ValueError(f"'{cols.finding_list}' names a finding NIH does not have")
        return {f: int(f in listed) for f in cols.columns}
    for finding, columns in cols.columns.items():
        values = []
        for col in columns:
            raw = str(rec[col])
            try:
                values.append(_parse_value(raw, cols.naming))
            except ValueError:
                allowed = "1, 0 or blank" if cols.naming == "nih" else "1, 0, -1 or blank"
                raise ValueError(f"'{col}' is '{raw.strip()[:20]}', not {allowed}") from None
        if any(v == 1 for v in values):
            labels[finding] = 1
        elif values and all(v is not None for v in values):
            labels[finding] = int(values[0]) if len(values) == 1 else 0
        else:
            labels[finding] = None
    return labels


def parse_label_table(
    frame,
    name: str,
    *,
    file_column: str | None = None,
    naming: str = "auto",
    report_column: str | None = None,
    patient_column: str | None = None,
    view_column: str | None = None,
    boxes_column: str | None = None,
    require_labels: bool = True,
    show_file: bool = False,
) -> LabelTable:
    """Parse a table's rows (labels, patient, report, view, boxes) without touching any file.

    Args:
        frame: A DataFrame of strings (:func:`read_frame`).
        name: The table's name in problems ("labels.csv").
        file_column: The column naming each image (default: the first of
            :data:`FILE_COLUMNS` present).
        naming: ``"auto"``, ``"chexpert"`` or ``"nih"`` (see :func:`label_columns`).
        report_column, patient_column, view_column, boxes_column: Column names (default:
            guessed; absent is fine).
        require_labels: Refuse a table with no label column.
        show_file: Name a bad row by its number and file (``"t.csv row 4 (a.png)"``), not
            only its number.

    Raises:
        ManifestError: No file column, or (with ``require_labels``) no label column.
    """
    columns = [str(c) for c in frame.columns]
    file_col = _find_column(columns, file_column, FILE_COLUMNS)
    if file_col is None:
        raise ManifestError(
            f"{name} needs a column naming each image file "
            f"({', '.join(FILE_COLUMNS[:4])}); it has: {', '.join(columns[:15])}."
        )
    cols = label_columns(columns, naming)
    if require_labels and not cols.columns:
        raise ManifestError(
            f"{name} has no column named after a CheXpert finding (e.g. 'Pleural Effusion')."
        )
    report_col = _find_column(columns, report_column, REPORT_COLUMNS)
    patient_col = _find_column(columns, patient_column, PATIENT_COLUMNS)
    view_col = _find_column(columns, view_column, VIEW_COLUMNS)
    boxes_col = _find_column(columns, boxes_column, BOX_COLUMNS)
    consumed = {file_col, report_col, patient_col, view_col, boxes_col} | cols.used
    extra_cols = [c for c in columns if c not in consumed]

    def text(rec, col):
        value = str(rec[col]).strip() if col else ""
        return value or None

    rows: list[TableRow] = []
    problems: list[ManifestProblem] = []
    for r, rec in enumerate(frame.to_dict("records"), start=2):  # row 1 is the header
        where = f"{name} row {r}"
        file = str(rec[file_col]).strip()
        if not file:
            problems.append(ManifestProblem(where, "no file name"))
            continue
        try:
            labels = _row_labels(rec, cols)
            boxes = parse_boxes(str(rec[boxes_col])) if boxes_col else ()
        except ValueError as err:
            problems.append(ManifestProblem(f"{where} ({file})" if show_file else where, str(err)))
            continue
        rows.append(
            TableRow(
                where=where,
                file=file,
                labels=labels,
                patient_id=text(rec, patient_col),
                report=text(rec, report_col),
                view=text(rec, view_col),
                boxes=boxes,
                extra={c: str(rec[c]).strip() for c in extra_cols if str(rec[c]).strip()},
            )
        )
    return LabelTable(name, tuple(rows), tuple(problems), cols)


def _image_size(path: Path, check: str) -> tuple[int, int] | None:
    """(width, height) of the image at ``path`` after the ``check``; raises ExplorerError / OSError."""
    if check == "exists":
        return None
    if check == "decode":
        from explorer.imaging import load_radiograph

        rows, cols = load_radiograph(path).pixels.shape
        return cols, rows
    from PIL import Image, UnidentifiedImageError

    with path.open("rb") as fh:
        head = fh.read(132)
    if not head:
        raise ExplorerError("the file is empty")
    if head[128:132] == b"DICM" or head[:4] == b"DICM":
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "Rows" not in ds or "Columns" not in ds:
            raise ExplorerError("the DICOM file holds no image")
        return int(ds.Columns), int(ds.Rows)
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()  # PNG: checks every chunk's CRC without decoding
    except UnidentifiedImageError:
        raise ExplorerError("not a PNG, JPEG, DICOM or other image file") from None
    except SyntaxError:
        raise ExplorerError("its image data is truncated or damaged") from None
    return size


def row_number(where: str) -> int:
    """The row number in a problem's name (``"t.csv row 4 (a.png)"`` -> 4; 0 when none)."""
    match = re.search(r" row (\d+)", where)
    return int(match.group(1)) if match else 0


def _box_problem(boxes: Sequence[Box], size: tuple[int, int] | None) -> str | None:
    if size is None:
        return None
    width, height = size
    for b in boxes:
        if b.x + b.w > width + 1 or b.y + b.h > height + 1:
            return (
                f"a {b.finding} box ({b.x:g} {b.y:g} {b.w:g} {b.h:g}) lies outside the "
                f"{width} x {height} image"
            )
    return None


def read_manifest(
    table: str | Path,
    images_root: str | Path | None = None,
    *,
    file_column: str | None = None,
    naming: str = "auto",
    report_column: str | None = None,
    patient_column: str | None = None,
    view_column: str | None = None,
    boxes_column: str | None = None,
    check: str = "header",
    name: str | None = None,
) -> Manifest:
    """Read a labelled image table (CSV, TSV or Parquet), or a named manifest, as a Manifest.

    Args:
        table: The table's path, or a registered name (``"nih-test"``, see
            :func:`explorer.data.named.named_manifest`).
        images_root: Where relative file paths resolve (default: the table's folder).
        file_column, report_column, patient_column, view_column, boxes_column: Column names
            (default: guessed among :data:`FILE_COLUMNS`, :data:`REPORT_COLUMNS`...).
        naming: Label naming, ``"auto"``, ``"chexpert"`` or ``"nih"``.
        check: How each image is checked: ``"header"``, ``"decode"`` or ``"exists"`` (module
            docstring).
        name: The manifest's name in tables (default: the table's file name).

    Returns:
        The usable rows in table order and each bad row with its reason.

    Raises:
        ManifestError: The table cannot be read, has no file column or no label column.
    """
    from explorer.data.named import NAMED_MANIFESTS, named_manifest

    if isinstance(table, str) and table in NAMED_MANIFESTS and not Path(table).exists():
        return named_manifest(table, check=check)
    if check not in CHECKS:
        raise ManifestError(f"check must be one of {', '.join(CHECKS)}; got '{check}'.")
    start = time.perf_counter()
    path = Path(table)
    frame = read_frame(path)
    parsed = parse_label_table(
        frame,
        path.name,
        file_column=file_column,
        naming=naming,
        report_column=report_column,
        patient_column=patient_column,
        view_column=view_column,
        boxes_column=boxes_column,
        show_file=True,
    )
    root = Path(images_root) if images_root is not None else path.parent
    problems = list(parsed.problems)
    rows: list[ManifestRow] = []
    seen: dict[Path, str] = {}
    for t in parsed.rows:
        file = Path(t.file).expanduser()
        where = f"{t.where} ({t.file})"
        image = file if file.is_absolute() else root / file
        key = image.resolve()
        if key in seen:
            problems.append(
                ManifestProblem(where, f"{t.file} is listed twice ({seen[key]}); the first is used")
            )
            continue
        seen[key] = t.where
        if not image.is_file():
            problems.append(ManifestProblem(where, f"no image at {image}"))
            continue
        try:
            size = _image_size(image, check)
        except (ExplorerError, OSError, ValueError) as err:
            problems.append(ManifestProblem(where, f"unreadable image: {err}"))
            continue
        bad_box = _box_problem(t.boxes, size)
        if bad_box:
            problems.append(ManifestProblem(where, bad_box))
            continue
        rows.append(
            ManifestRow(
                key=t.file,
                path=image,
                labels=t.labels,
                patient_id=t.patient_id,
                report=t.report,
                view=t.view,
                boxes=t.boxes,
                extra=t.extra,
            )
        )
    problems.sort(key=lambda p: row_number(p.row))  # table order
    log.info(
        "read %s: %d rows, %d problems in %.2fs (check=%s)",
        path.name,
        len(rows),
        len(problems),
        time.perf_counter() - start,
        check,
    )
    return Manifest(
        name=name or path.name,
        rows=tuple(rows),
        problems=tuple(problems),
        findings=parsed.labels.findings,
    )


# --- writing ----------------------------------------------------------------------------------

#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula, prefixed with ``'``; else as is.

    File names, typed findings and report texts reach the app's CSVs from strangers
    (``=HYPERLINK("http://...")``); numbers stay numbers (a negative margin is not text).
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_text(frame) -> str:
    """The one way the project writes a table as CSV: no index, every text cell
    :func:`spreadsheet_safe`, the column names too."""
    from pandas.api.types import is_numeric_dtype

    safe = frame.rename(columns=lambda c: spreadsheet_safe(str(c)))
    for col in safe.columns:
        if not is_numeric_dtype(safe[col]):  # object and string columns alike
            safe[col] = safe[col].map(spreadsheet_safe)
    return safe.to_csv(index=False)

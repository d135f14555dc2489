"""Report corpora for the map: the real IU / Open-i reports, phantom reports, a user's table.

A :class:`Corpus` is a frozen list of report texts with stable ids and, where known, a label
matrix over the 14 CheXpert findings (``1`` positive, ``0`` negative, ``-1`` uncertain,
``NaN`` not mentioned). Corpora without labels are labelled by
:mod:`explorer.reports.labeler` when a map is built.

* ``iu``: the 3,955 Indiana University chest X-ray reports (Demner-Fushman et al., 2016) read
  offline from the ``torchxrayvision`` wheel; FINDINGS + IMPRESSION, "XXXX" marks words removed
  by de-identification. Licence CC BY-NC-ND 4.0: read and displayed, never modified or
  redistributed by this project. Their MeSH terms are kept as a reference label set.
* ``phantom:N``: ``N`` reports written by the phantom report generator (seeds from
  :data:`PHANTOM_CORPUS_SEED`), labelled by the generator itself.
* a CSV or Parquet file: choose the text column; label columns named like CheXpert findings
  are used when present (values 1 / 0 / -1 / blank), otherwise the labeler labels the text.

:func:`load_corpus` takes a spec string (``"iu"``, ``"phantom:100000"``, or a file path with an
optional ``::column``) and is what the CLI and the app call.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explorer.errors import ExplorerError
from explorer.vocab.labels import CHEXPERT_FINDINGS

#: First seed of the phantom report corpus (far from the training and held-out seeds).
PHANTOM_CORPUS_SEED = 50_000_000
#: Largest corpus the app builds (rows); a bigger file is refused with a clear message.
MAX_REPORTS = 250_000
#: Size of the phantom images rendered only to write their reports (the pixels are discarded).
_PHANTOM_REPORT_SIZE = 64
_TEXT_COLUMN_GUESSES = ("report", "text", "report_text", "findings", "impression", "sentence")
IU_LICENCE = (
    "Indiana University chest X-ray reports (Open-i), CC BY-NC-ND 4.0: shown for reading only."
)


class CorpusError(ExplorerError):
    """A corpus that cannot be read (bad spec, bad file, missing column, no reports)."""


@dataclass(frozen=True, eq=False)
class Corpus:
    """Reports with ids and optional labels.

    Attributes:
        name: Short name used in cache keys and titles (``"iu"``, ``"phantom-1000"``, ...).
        ids: One id per report.
        texts: The report texts.
        labels: ``float32 [n, 14]`` over :data:`CHEXPERT_FINDINGS` (NaN = not mentioned), or
            ``None`` when the labeler must label the texts.
        label_source: Who gave the labels (``"generator"``, ``"file"``, ``"labeler"``).
        reference: Optional second label set for the same reports (IU: MeSH positives as
            ``1`` and ``NaN`` elsewhere), used to colour labeler-vs-reference disagreements.
        licence: What a person may do with the texts.
        reference_source: Who gave ``reference``, in words ("IU MeSH terms").
    """

    name: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: np.ndarray | None = None
    label_source: str = "labeler"
    reference: np.ndarray | None = None
    licence: str = ""
    reference_source: str = ""
    _hash: list = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.texts):
            raise ValueError("ids and texts differ in length")
        for arr in (self.labels, self.reference):
            if arr is not None and arr.shape != (len(self.texts), len(CHEXPERT_FINDINGS)):
                raise ValueError(f"label matrix has shape {arr.shape}, expected (n, 14)")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def content_hash(self) -> str:
        """Hex digest of ids, texts and given labels: the corpus part of a map's cache key."""
        if not self._hash:
            h = hashlib.sha256()
            for i, t in zip(self.ids, self.texts, strict=True):
                h.update(i.encode("utf-8", "replace") + b"\x00" + t.encode("utf-8", "replace"))
                h.update(b"\x01")
            if self.labels is not None:
                h.update(np.nan_to_num(self.labels, nan=9.0).astype(np.int8).tobytes())
            self._hash.append(h.hexdigest())
        return self._hash[0]


def labels_to_matrix(rows: Sequence[dict[str, int | None]]) -> np.ndarray:
    """Per-report label dicts (finding -> 1/0/-1/None) -> ``float32 [n, 14]`` with NaN."""
    out = np.full((len(rows), len(CHEXPERT_FINDINGS)), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        for j, name in enumerate(CHEXPERT_FINDINGS):
            v = row.get(name)
            if v is not None:
                out[i, j] = float(v)
    return out


# --- IU / Open-i ---------------------------------------------------------------------------


def iu_corpus() -> Corpus:
    """The IU reports with MeSH-derived reference labels (positives only)."""
    from explorer.reports import mesh

    reports = [r for r in mesh.iu_reports() if r.text.strip()]
    reference = labels_to_matrix([mesh.mesh_labels(r) for r in reports])
    return Corpus(
        name="iu",
        ids=tuple(r.id for r in reports),
        texts=tuple(r.text for r in reports),
        labels=None,
        label_source="labeler",
        reference=reference,
        licence=IU_LICENCE,
        reference_source="IU MeSH terms",
    )


# --- phantom reports -----------------------------------------------------------------------


def phantom_corpus(n: int, seed: int = PHANTOM_CORPUS_SEED) -> Corpus:
    """``n`` generated phantom reports with the generator's own labels."""
    from explorer.phantom import generate_report, render_phantom

    if n < 1:
        raise CorpusError("A phantom corpus needs at least one report.")
    if n > MAX_REPORTS:
        raise CorpusError(f"A phantom corpus holds at most {MAX_REPORTS:,} reports; got {n:,}.")
    ids, texts, rows = [], [], []
    # At 64 px a thin atelectasis band can rasterise to no pixel; the renderer warns about the
    # mask, which a report corpus does not use.
    renderer_log = logging.getLogger("explorer.phantom.renderer")
    level = renderer_log.level
    renderer_log.setLevel(logging.ERROR)
    try:
        for k in range(n):
            s = seed + k
            report = generate_report(render_phantom(s, size=_PHANTOM_REPORT_SIZE), s)
            ids.append(f"phantom-{s}")
            texts.append(report.text)
            rows.append(report.labels)
    finally:
        renderer_log.setLevel(level)
    return Corpus(
        name=f"phantom-{n}",
        ids=tuple(ids),
        texts=tuple(texts),
        labels=labels_to_matrix(rows),
        label_source="generator",
        licence="Synthetic reports generated by this project.",
    )


# --- a user's table ------------------------------------------------------------------------


def _read_table(path: Path | str | bytes, filename: str, max_rows: int | None = None):
    """The table as a DataFrame; a CSV / TSV stops after ``max_rows + 1`` rows (enough to know
    it is too long without parsing a million rows first)."""
    import pandas as pd

    nrows = None if max_rows is None else max_rows + 1
    suffix = Path(filename).suffix.lower()
    source = io.BytesIO(path) if isinstance(path, bytes) else path
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(source)
        if suffix in (".csv", ".txt"):
            return pd.read_csv(source, nrows=nrows)
        if suffix == ".tsv":
            return pd.read_csv(source, sep="\t", nrows=nrows)
    except FileNotFoundError:
        raise CorpusError(f"No file at {filename}.") from None
    except Exception as err:  # pandas raises many types for damaged files
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise CorpusError(
            f"{Path(filename).name} could not be read as {kind}: {_table_problem(err, kind)}."
        ) from None
    raise CorpusError(
        f"{Path(filename).name}: report tables must be CSV, TSV or Parquet files, not '{suffix or 'no extension'}'."
    )


def _table_problem(err: Exception, kind: str) -> str:
    """Why pandas could not read a table, in words."""
    name = type(err).__name__
    if name == "EmptyDataError":
        return "the file is empty"
    if isinstance(err, UnicodeDecodeError):
        return "it is not UTF-8 text (save it as 'CSV UTF-8')"
    if name == "ParserError":
        return "its rows do not have the same number of columns, or it is not text"
    return f"the file is damaged or is not a {kind} file"


def label_columns(columns: Sequence[str]) -> dict[str, str]:
    """Finding -> the column named after it (case, spaces and underscores ignored)."""
    norm = {str(c).strip().lower().replace("_", " "): c for c in columns}
    return {f: norm[f.lower()] for f in CHEXPERT_FINDINGS if f.lower() in norm}


def parse_label(value: object) -> float:
    """A table cell -> 1.0 / 0.0 / -1.0, NaN when blank; ``ValueError`` for anything else."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    if isinstance(value, str):
        if not value.strip():
            return np.nan
        value = float(value)  # ValueError for words
    v = float(value)
    if v not in (1.0, 0.0, -1.0):
        raise ValueError(f"{v:g} is not a label value")
    return v


def _parse_label(value: object, column: str, row: int) -> float:
    try:
        return parse_label(value)
    except ValueError:
        try:
            shown = f"{float(value):g}"
        except ValueError:
            shown = f"'{str(value)[:20]}'"
        raise CorpusError(
            f"Column '{column}', row {row + 1}: labels must be 1, 0, -1 or blank, got {shown}."
        ) from None


def table_corpus(
    path: Path | str | bytes,
    text_column: str | None = None,
    filename: str | None = None,
    use_label_columns: bool = True,
    max_rows: int = MAX_REPORTS,
) -> Corpus:
    """A CSV / TSV / Parquet table of reports -> :class:`Corpus`.

    Args:
        path: File path, or the file's bytes (then ``filename`` gives the format).
        text_column: Column holding the report text; guessed from common names when omitted.
        filename: Name used for the format and in messages (defaults to ``path``).
        use_label_columns: Use columns named like CheXpert findings as labels when present.
        max_rows: Most reports accepted (the app maps fewer than the command line).

    Raises:
        CorpusError: Unreadable file, unknown column, no non-empty reports, bad label values,
            too many rows.
    """
    filename = filename or (str(path) if not isinstance(path, bytes) else "upload.csv")
    df = _read_table(path, filename, max_rows)
    name = Path(filename).stem or "table"
    cols = [str(c) for c in df.columns]
    if text_column is None:
        lower = {c.lower(): c for c in cols}
        text_column = next((lower[g] for g in _TEXT_COLUMN_GUESSES if g in lower), None)
        if text_column is None:
            raise CorpusError(
                f"{Path(filename).name}: say which column holds the report text "
                f"(columns: {', '.join(cols[:20])})."
            )
    elif text_column not in cols:
        raise CorpusError(
            f"{Path(filename).name} has no column '{text_column}' (columns: {', '.join(cols[:20])})."
        )
    if len(df) > max_rows:
        raise CorpusError(
            f"{Path(filename).name} has more than {max_rows:,} rows; "
            f"the map takes at most {max_rows:,}."
        )
    texts = df[text_column].astype("string").fillna("").str.strip()
    keep = np.flatnonzero((texts != "").to_numpy())
    if keep.size == 0:
        raise CorpusError(f"{Path(filename).name}: column '{text_column}' holds no report text.")
    id_col = next((c for c in cols if c.lower() in ("id", "report_id", "study_id", "uid")), None)
    ids = (
        tuple(str(df[id_col].iloc[i]) for i in keep)
        if id_col
        else tuple(f"row-{i + 1}" for i in keep)
    )
    labels = None
    label_cols = label_columns(cols) if use_label_columns else {}
    if label_cols:
        labels = np.full((keep.size, len(CHEXPERT_FINDINGS)), np.nan, dtype=np.float32)
        for j, finding in enumerate(CHEXPERT_FINDINGS):
            col = label_cols.get(finding)
            if col is None:
                continue
            values = df[col].tolist()
            for r, i in enumerate(keep):
                labels[r, j] = _parse_label(values[i], col, int(i))
    return Corpus(
        name=name,
        ids=ids,
        texts=tuple(texts.iloc[keep].tolist()),
        labels=labels,
        label_source="file" if labels is not None else "labeler",
        licence="Your own reports: used in memory for this session.",
    )


# --- specs ---------------------------------------------------------------------------------


def load_corpus(spec: str) -> Corpus:
    """``"iu"`` | ``"phantom:N"`` | ``"PATH[::TEXT_COLUMN]"`` -> :class:`Corpus`."""
    spec = (spec or "").strip()
    if spec.lower() in ("iu", "openi", "open-i"):
        return iu_corpus()
    if spec.lower().startswith("phantom"):
        _, _, n = spec.partition(":")
        try:
            count = int(n.replace("_", "").replace(",", "")) if n else 2000
        except ValueError:
            raise CorpusError(f"'{spec}': write phantom:N with N a whole number.") from None
        return phantom_corpus(count)
    if not spec:
        raise CorpusError("Name a corpus: 'iu', 'phantom:N' or a CSV/Parquet file.")
    path, _, column = spec.partition("::")
    return table_corpus(Path(path), text_column=column or None, filename=path)

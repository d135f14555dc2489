"""Batch error analysis: a set of labelled images, the model's affirmed-vs-negated verdicts.

A :class:`Batch` is images (from a folder, a ZIP, a manifest such as the shipped ``nih-test``,
or phantoms rendered on request) with optional CheXpert labels from a CSV (a file-name column
plus any of the 14 findings as 1 / 0 / -1 / blank, or NIH columns; read by
:mod:`explorer.data.table`). Unreadable images and bad CSV rows are listed in ``problems`` with their
reason; everything else still runs.

:func:`evaluate` scores every image with :func:`explorer.scoring.score_findings` (one image
forward pass each; prompt embeddings are cached) and returns an :class:`Evaluation`: one
:class:`Case` per image and finding, per-finding AUC and accuracy at a threshold, calibration
bins (all three from :mod:`explorer.eval.metrics`), and **negation errors** - a positive case where the model prefers the negated sentence,
or a negative case where it prefers the affirmed one. :func:`flips` lists the cases whose
verdict changes between two models on the same batch.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explorer.data.manifest import Manifest
from explorer.errors import ExplorerError
from explorer.eval.metrics import MIN_AUC_CASES, accuracy_at, auc_score, calibration_bins
from explorer.phantom.splits import PHANTOM_BATCH_SEED
from explorer.progress import Progress
from explorer.vocab.labels import CHEXPERT_FINDINGS, LABEL_NAMES

#: Most images in one batch (the app and the CLI refuse more with a clear message).
MAX_IMAGES = 2000
#: Largest uncompressed ZIP content accepted (zip-bomb guard).
MAX_ZIP_BYTES = 2 * 1024**3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")
#: The reason given for a file of a batch that is no image (by its name), e.g. ``readme.txt``.
NOT_AN_IMAGE = "not an image file (PNG, JPEG, DICOM, TIFF or BMP), so not used"


class BatchError(ExplorerError):
    """A batch that cannot run at all (no images, unreadable archive, unusable label file)."""


@dataclass(frozen=True)
class BatchImage:
    """One readable image of a batch: its name, pixels and the original bytes (for drill-down)."""

    name: str
    pixels: np.ndarray
    data: bytes
    suffix: str


@dataclass(frozen=True, eq=False)
class Batch:
    """Images, their labels (``float32 [n, 14]``, NaN = blank) and what could not be used."""

    name: str
    images: tuple[BatchImage, ...]
    labels: np.ndarray
    problems: tuple[tuple[str, str], ...]  # (file or CSV row, reason)

    def __len__(self) -> int:
        return len(self.images)


# --- reading -------------------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
    """An image by its name: a known image suffix, or none (PACS exports such as ``IM0001``)."""
    suffix = Path(name).suffix.lower()
    return suffix in IMAGE_SUFFIXES or not suffix


def _image_entries(source: Path) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The image files of a folder or ZIP (name, bytes) and the names of the other files.

    Hidden files and macOS's ``__MACOSX`` copies are not files a person put there and are
    passed over in silence; any other file that is no image (``readme.txt``) is named, so the
    person knows it was not used.
    """
    if source.is_dir():
        files = sorted(
            (p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")),
            key=lambda p: (p.name, str(p)),
        )
        images = [(p.name, p.read_bytes()) for p in files if _is_image_name(p.name)]
        return images, [p.name for p in files if not _is_image_name(p.name)]
    if not source.exists():
        raise BatchError(f"No folder or ZIP file at {source}.")
    try:
        with zipfile.ZipFile(source) as zf:
            infos = [
                i
                for i in zf.infolist()
                if not i.is_dir()
                and not i.filename.startswith("__MACOSX")
                and not Path(i.filename).name.startswith(".")
            ]
            others = sorted(Path(i.filename).name for i in infos if not _is_image_name(i.filename))
            infos = [i for i in infos if _is_image_name(i.filename)]
            if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
                raise BatchError(
                    f"{source.name} unpacks to more than {MAX_ZIP_BYTES // 1024**3} GB; "
                    "split it into smaller batches."
                )
            infos.sort(key=lambda i: (Path(i.filename).name, i.filename))
            return [(Path(i.filename).name, zf.read(i)) for i in infos], others
    except zipfile.BadZipFile:
        raise BatchError(f"{source.name} is not a ZIP archive or a folder of images.") from None


def _label_rows(labels_csv: Path | None) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """The label CSV through the one table parser (:mod:`explorer.data.table`), keyed by file name."""
    from explorer.data.table import ManifestError, parse_label_table, read_frame, row_number

    if labels_csv is None:
        return {}, []
    try:
        table = parse_label_table(read_frame(labels_csv, "label file"), Path(labels_csv).name)
    except ManifestError as err:
        raise BatchError(str(err)) from None
    rows: dict[str, np.ndarray] = {}
    problems = [(p.row, p.reason) for p in table.problems]
    for t in table.rows:
        name = Path(t.file).name
        if name in rows:
            problems.append((t.where, f"{name} is labelled twice; the first row is used"))
            continue
        rows[name] = _label_vector(t.labels)
    problems.sort(key=lambda p: row_number(p[0]))  # table order
    return rows, problems


def _label_vector(labels) -> np.ndarray:
    """Finding -> 1 / 0 / -1 / None as ``float32 [14]`` over the CheXpert findings, NaN = blank."""
    return np.array(
        [np.nan if labels.get(f) is None else labels[f] for f in CHEXPERT_FINDINGS],
        dtype=np.float32,
    )


def manifest_batch(manifest: Manifest, progress: Progress | None = None) -> Batch:
    """A manifest's rows as a batch (pixels read now; :data:`MAX_IMAGES` at most).

    The manifest's problems become the batch's; an image that fails to decode is added to them.
    """
    from explorer.imaging import load_radiograph

    if len(manifest) > MAX_IMAGES:
        raise BatchError(
            f"{manifest.name} holds {len(manifest):,} images; a batch takes at most {MAX_IMAGES:,}."
        )
    problems = [(p.row, p.reason) for p in manifest.problems]
    items, vecs = [], []
    for k, row in enumerate(manifest.rows):
        if progress:
            progress(k / max(len(manifest), 1), "reading images")
        try:
            data = row.path.read_bytes()
            pixels = load_radiograph(data).pixels
        except (ExplorerError, OSError) as err:
            problems.append((row.key, str(err)))
            continue
        items.append(BatchImage(row.key, pixels, data, row.path.suffix.lower()))
        vecs.append(_label_vector(row.labels))
    if not items:
        raise BatchError("None of the images could be read; see the reasons listed.")
    return Batch(manifest.name, tuple(items), np.stack(vecs), tuple(problems))


def read_batch(
    images: str | Path, labels_csv: str | Path | None = None, progress: Progress | None = None
) -> Batch:
    """A folder or ZIP of images (+ optional label CSV), ``"phantom:N"``, or a named manifest.

    ``images`` may be a registered manifest's name (``"nih-test"``, the shipped real test
    films; :mod:`explorer.data.named`). The label CSV is parsed by the one table parser,
    :func:`explorer.data.table.parse_label_table` (CheXpert or NIH column names).
    """
    from explorer.data.named import NAMED_MANIFESTS, named_manifest
    from explorer.imaging import load_radiograph

    spec = str(images)
    if spec in NAMED_MANIFESTS and not Path(spec).exists():
        return manifest_batch(named_manifest(spec), progress)
    if spec.lower().startswith("phantom"):
        _, _, n = spec.partition(":")
        try:
            count = int(n) if n else 200
        except ValueError:
            raise BatchError(f"'{spec}': write phantom:N with N a whole number.") from None
        return phantom_batch(count, progress=progress)
    entries, others = _image_entries(Path(images))
    if not entries:
        raise BatchError(f"{Path(images).name} holds no PNG, JPEG or DICOM images.")
    if len(entries) > MAX_IMAGES:
        raise BatchError(
            f"{Path(images).name} holds {len(entries):,} images; a batch takes at most {MAX_IMAGES:,}."
        )
    label_rows, problems = _label_rows(Path(labels_csv) if labels_csv else None)
    problems = [(name, NOT_AN_IMAGE) for name in others] + problems
    seen: set[str] = set()
    items, vecs = [], []
    for k, (name, data) in enumerate(entries):
        if progress:
            progress(k / len(entries), "reading images")
        if name in seen:
            problems.append((name, "another image has the same file name; this one is skipped"))
            continue
        seen.add(name)
        try:
            pixels = load_radiograph(data).pixels
        except ExplorerError as err:
            problems.append((name, str(err)))
            continue
        items.append(BatchImage(name, pixels, data, Path(name).suffix.lower()))
        vecs.append(label_rows.get(name, np.full(len(CHEXPERT_FINDINGS), np.nan, dtype=np.float32)))
    for name in sorted(set(label_rows) - seen):
        problems.append((name, "labelled in the CSV but not among the images"))
    if not items:
        raise BatchError("None of the images could be read; see the reasons listed.")
    return Batch(
        name=Path(images).stem,
        images=tuple(items),
        labels=np.stack(vecs).astype(np.float32),
        problems=tuple(problems),
    )


def phantom_batch(
    n: int, seed: int = PHANTOM_BATCH_SEED, progress: Progress | None = None
) -> Batch:
    """``n`` phantoms rendered on request, labelled with their ground truth."""
    from PIL import Image

    from explorer.phantom import render_phantom
    from explorer.phantom.examples import SEEDED_NAME
    from explorer.reports.corpus import labels_to_matrix

    if not 1 <= n <= MAX_IMAGES:
        raise BatchError(f"A phantom batch holds 1 to {MAX_IMAGES:,} images; got {n}.")
    items, rows = [], []
    for k in range(n):
        if progress:
            progress(k / n, "rendering phantoms")
        ph = render_phantom(seed + k)
        buf = io.BytesIO()
        Image.fromarray((np.clip(ph.image, 0, 1) * 255).round().astype(np.uint8)).save(buf, "PNG")
        name = SEEDED_NAME.format(seed=seed + k)  # the Attribution tab finds its masks by it
        items.append(BatchImage(name, ph.image, buf.getvalue(), ".png"))
        rows.append(ph.labels())
    return Batch(f"phantom-{n}", tuple(items), labels_to_matrix(rows), ())


# --- evaluation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One image and finding: the label and the model's affirmed-vs-negated verdict."""

    image: str
    finding: str
    label: float  # 1 / 0 / -1, NaN = blank
    prob_affirmed: float
    margin: float
    negation_blind: bool

    @property
    def labelled(self) -> bool:
        """A definite label (positive or negative); uncertain and blank cases are not scored."""
        return self.label in (0.0, 1.0)

    @property
    def negation_error(self) -> bool:
        """Positive case, model prefers "no X"; or negative case, model prefers "X"."""
        return (self.label == 1 and self.prob_affirmed < 0.5) or (
            self.label == 0 and self.prob_affirmed > 0.5
        )

    @property
    def error_confidence(self) -> float:
        """How sure the model is of a wrong verdict (0 when not a negation error)."""
        return abs(self.prob_affirmed - 0.5) * 2 if self.negation_error else 0.0


@dataclass(frozen=True, eq=False)
class Evaluation:
    """A model's verdicts on a batch (see module docstring)."""

    model: str
    templates: tuple[str, ...]
    batch: str
    cases: tuple[Case, ...]

    @property
    def provenance(self) -> dict[str, str]:
        """Model and prompt templates, as columns for exported tables."""
        return {"model": self.model, "templates": " | ".join(self.templates)}

    def to_frame(self, errors_only: bool = False):
        """Cases as a table, most confident errors first (then unlabelled, then correct)."""
        import pandas as pd

        rows = [
            {
                "image": c.image,
                "finding": c.finding,
                "label": LABEL_NAMES.get(int(c.label), "") if not np.isnan(c.label) else "",
                "P(affirmed)": round(c.prob_affirmed, 4),
                "margin": round(c.margin, 4),
                "negation error": c.negation_error,
                "error confidence": round(c.error_confidence, 4),
                "negation-blind": c.negation_blind,
            }
            for c in self.cases
            if c.negation_error or not errors_only
        ]
        frame = pd.DataFrame(rows)
        if frame.empty:
            return frame
        return frame.sort_values(
            ["error confidence", "negation error"], ascending=False, kind="stable"
        ).reset_index(drop=True)

    def metrics(self, threshold: float = 0.5, min_cases: int = MIN_AUC_CASES):
        """Per finding: positives, negatives, AUC, accuracy at ``threshold``, negation errors.

        The AUC is left blank (NaN) for a finding with fewer than ``min_cases`` positive or
        negative cases: on five cases it would say little and look precise.
        """
        import pandas as pd

        rows = []
        for finding in dict.fromkeys(c.finding for c in self.cases):
            cs = [c for c in self.cases if c.finding == finding and c.labelled]
            y = np.array([c.label == 1 for c in cs], dtype=bool)
            p = np.array([c.prob_affirmed for c in cs], dtype=np.float64)
            rows.append(
                {
                    "finding": finding,
                    "positives": int(y.sum()),
                    "negatives": int((~y).sum()),
                    "AUC": round(auc_score(y, p), 4)
                    if min(y.sum(), (~y).sum()) >= min_cases
                    else float("nan"),
                    f"accuracy@{threshold:g}": round(accuracy_at(y, p, threshold), 4),
                    "negation errors": int(sum(c.negation_error for c in cs)),
                }
            )
        return pd.DataFrame(rows)

    def calibration(self, bins: int = 10) -> list[dict]:
        """Reliability bins over all labelled cases: mean P(affirmed) vs share positive.

        See :func:`explorer.eval.metrics.calibration_bins` (one dict per non-empty bin).
        """
        cs = [c for c in self.cases if c.labelled]
        p = np.array([c.prob_affirmed for c in cs], dtype=np.float64)
        y = np.array([c.label == 1 for c in cs], dtype=bool)
        return calibration_bins(p, y, bins)


def evaluate(
    model,
    batch: Batch,
    templates: Sequence[str] | None = None,
    findings: Sequence[str] = CHEXPERT_FINDINGS,
    progress: Progress | None = None,
) -> Evaluation:
    """Score every image of ``batch`` on ``findings`` (see module docstring)."""
    from explorer.scoring import score_findings

    cols = [CHEXPERT_FINDINGS.index(f) for f in findings]
    cases: list[Case] = []
    used: tuple[str, ...] = ()
    for k, item in enumerate(batch.images):
        if progress:
            progress(k / len(batch), f"scoring {item.name}")
        result = score_findings(model, item.pixels, findings, templates=templates or None)
        used = result.templates
        for j, s in zip(cols, result.scores, strict=True):
            cases.append(
                Case(
                    item.name,
                    s.finding,
                    float(batch.labels[k, j]),
                    s.prob_affirmed,
                    s.margin,
                    s.negation_blind,
                )
            )
    return Evaluation(model.name, used, batch.name, tuple(cases))


def flips(a: Evaluation, b: Evaluation):
    """Labelled cases whose verdict (at 0.5) differs between two evaluations of one batch."""
    import pandas as pd

    other = {(c.image, c.finding): c for c in b.cases}
    rows = []
    for c in a.cases:
        d = other.get((c.image, c.finding))
        if d is None or not c.labelled or c.negation_error == d.negation_error:
            continue
        rows.append(
            {
                "image": c.image,
                "finding": c.finding,
                "label": LABEL_NAMES[int(c.label)],
                f"P(affirmed) {a.model}": round(c.prob_affirmed, 4),
                f"P(affirmed) {b.model}": round(d.prob_affirmed, 4),
                "change": f"fixed by {b.model}" if c.negation_error else f"broken by {b.model}",
            }
        )
    return pd.DataFrame(rows)

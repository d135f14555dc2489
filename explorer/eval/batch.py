"""Batch error analysis: a set of labelled images, the model's affirmed-vs-negated verdicts.

A :class:`Batch` is images (from a folder, a ZIP, a manifest such as the shipped ``nih-test``,
or phantoms rendered on request) with optional CheXpert labels from a CSV (a file-name column
plus any of the 14 findings as 1 / 0 / -1 / blank, or NIH columns; read by
:mod:`explorer.data.table`). Unreadable images (ZIP entries that are encrypted, compressed
with an unknown method or damaged included) and bad CSV rows are listed in ``problems`` with
their reason; everything else still runs.

Images are read one at a time and kept shrunk (:func:`explorer.imaging.downscale`), never as
their uploaded bytes: a batch lives in a session's state, and a few kB of ZIP can hold
hundreds of megapixels. A batch is bounded by :data:`MAX_IMAGES`, :data:`MAX_ZIP_BYTES`,
:data:`MAX_BATCH_PIXELS`, :data:`MAX_BATCH_KEPT_BYTES` and :data:`MAX_LABEL_ROWS`; its
problem list by :data:`MAX_PROBLEMS`.

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
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
#: Most pixels the images of one batch may decode to, all together, before they are shrunk to
#: :data:`explorer.imaging.MAX_KEPT_SIDE`: it bounds the decoding time one batch may take
#: (50 films of 40 megapixels, or 2,000 of 1 megapixel).
MAX_BATCH_PIXELS = 2_000_000_000
#: Most memory the kept (shrunk, ``float32``) pixels of one batch may take, in bytes: it bounds
#: what a batch holds in a session's state (1,000 films kept at 512 x 512); a few MB of ZIP of
#: blank PNGs would otherwise hold gigabytes.
MAX_BATCH_KEPT_BYTES = 1024**3
#: Most rows a label CSV may have: a batch holds at most :data:`MAX_IMAGES` images, and a
#: table of a whole hospital's films would take minutes to parse for nothing.
MAX_LABEL_ROWS = 20_000
#: Most problem rows a batch lists; the rest are counted in one last row.
MAX_PROBLEMS = 200
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")
#: The reason given for a file of a batch that is no image (by its name), e.g. ``readme.txt``.
NOT_AN_IMAGE = "not an image file (PNG, JPEG, DICOM, TIFF or BMP), so not used"
#: The reasons given for a ZIP entry that cannot be unpacked.
ZIP_ENCRYPTED = "encrypted (password-protected) in the ZIP, so not read"
ZIP_METHOD = "compressed with a method this app cannot read, so not read"
ZIP_DAMAGED = "damaged in the ZIP (its content does not unpack), so not read"


class BatchError(ExplorerError):
    """A batch that cannot run at all (no images, unreadable archive, unusable label file)."""


@dataclass(frozen=True)
class BatchImage:
    """One readable image of a batch: its name and its pixels, shrunk when read.

    The pixels are ``float32`` ``(H, W)`` in ``[0, 1]`` with the longest side at most
    :data:`explorer.imaging.MAX_KEPT_SIDE`; neither the uploaded bytes nor the full-resolution
    pixels are kept. A batch lives in a session's state, which can outlast the upload by far,
    and 40-megapixel films held at full size would fill the server's memory.
    """

    name: str
    pixels: np.ndarray

    def png_bytes(self) -> bytes:
        """The kept pixels as an 8-bit grayscale PNG (what the drill-down opens)."""
        from PIL import Image

        from explorer.imaging import to_uint8

        buf = io.BytesIO()
        Image.fromarray(to_uint8(self.pixels)).save(buf, "PNG")
        return buf.getvalue()


@dataclass(frozen=True, eq=False)
class Batch:
    """Images, their labels (``float32 [n, 14]``, NaN = blank) and what could not be used.

    ``problems`` lists at most :data:`MAX_PROBLEMS` rows and then one row counting the rest;
    ``problems_not_listed`` is that count (0 when every problem is listed).
    """

    name: str
    images: tuple[BatchImage, ...]
    labels: np.ndarray
    problems: tuple[tuple[str, str], ...]  # (file or CSV row, reason)
    problems_not_listed: int = 0

    def __len__(self) -> int:
        return len(self.images)

    @property
    def problem_count(self) -> int:
        """How many files or rows were not used (listed or counted)."""
        return len(self.problems) - bool(self.problems_not_listed) + self.problems_not_listed


def _batch(
    name: str, items: list[BatchImage], labels: np.ndarray, problems: list[tuple[str, str]]
) -> Batch:
    """A :class:`Batch` whose problems are capped at :data:`MAX_PROBLEMS` rows.

    A label file of 300,000 bad rows would otherwise answer with 300,000 rows that the page
    takes minutes to draw; the first rows say what is wrong, the count says how much.
    """
    rest = max(len(problems) - MAX_PROBLEMS, 0)
    listed = problems[:MAX_PROBLEMS]
    if rest:
        listed.append(
            (f"{rest:,} more", f"{rest:,} more problems are not listed (the first are above)")
        )
    return Batch(name, tuple(items), labels, tuple(listed), rest)


# --- reading -------------------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
    """An image by its name: a known image suffix, or none (PACS exports such as ``IM0001``)."""
    suffix = Path(name).suffix.lower()
    return suffix in IMAGE_SUFFIXES or not suffix


class _UnreadableEntry(Exception):
    """A ZIP entry that cannot be unpacked; ``str()`` is its reason for the problems list."""


@dataclass(frozen=True)
class _Entry:
    """An image file of a folder or ZIP: its name, and how to get its content when its turn
    comes, so that one image's bytes are held at a time rather than the whole archive's."""

    name: str
    fetch: Callable[[], bytes | Path]


def _unpack(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The content of one ZIP entry, or :class:`_UnreadableEntry` with a plain reason.

    zipfile's own errors differ by compression (zlib, bz2, lzma, the CRC check) and most of
    them quote the entry's name, which is often a patient identifier; none of them may reach
    the page or the server log, so each becomes one of three reasons, without its cause.
    """
    from explorer import imaging

    if info.flag_bits & 0x1:
        raise _UnreadableEntry(ZIP_ENCRYPTED)
    if info.file_size > imaging.MAX_FILE_BYTES:
        limit_mb = imaging.MAX_FILE_BYTES // (1024 * 1024)
        raise _UnreadableEntry(f"larger than the {limit_mb} MB one image may be, so not read")
    try:
        return zf.read(info)
    except NotImplementedError:
        raise _UnreadableEntry(ZIP_METHOD) from None
    except MemoryError:
        raise
    except Exception:  # see the docstring: every other failure is damaged data
        raise _UnreadableEntry(ZIP_DAMAGED) from None


@contextmanager
def _image_entries(source: Path) -> Iterator[tuple[list[_Entry], list[str]]]:
    """The image files of a folder or ZIP and the names of the other files.

    The ZIP stays open while the caller reads its entries one by one. Hidden files and macOS's
    ``__MACOSX`` copies are not files a person put there and are passed over in silence; any
    other file that is no image (``readme.txt``) is named, so the person knows it was not used.
    """
    if source.is_dir():
        files = sorted(
            (p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")),
            key=lambda p: (p.name, str(p)),
        )
        images = [_Entry(p.name, partial(Path, p)) for p in files if _is_image_name(p.name)]
        yield images, [p.name for p in files if not _is_image_name(p.name)]
        return
    if not source.exists():
        raise BatchError(f"No folder or ZIP file at {source}.")
    try:
        zf = zipfile.ZipFile(source)
    except Exception:  # BadZipFile, or OSError / ValueError from a mangled directory
        raise BatchError(f"{source.name} is not a ZIP archive or a folder of images.") from None
    with zf:
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
        yield [_Entry(Path(i.filename).name, partial(_unpack, zf, i)) for i in infos], others


def _kept_pixels(source: bytes | Path) -> tuple[np.ndarray, int]:
    """An image's pixels as a batch keeps them (shrunk) and how many pixels it decoded to.

    The full-resolution array is dropped on return, before the next image is read, so reading
    a batch holds one full-size image at a time, whatever the archive holds.
    """
    from explorer.imaging import downscale, load_radiograph

    img = load_radiograph(source)
    return downscale(img.pixels), img.pixels.size


class _Budget:
    """What the images of one batch have decoded to and what is kept of them, so far.

    Images are read one at a time, so the budget is checked as each one comes in: the batch is
    refused at the first image beyond :data:`MAX_BATCH_PIXELS` or :data:`MAX_BATCH_KEPT_BYTES`.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.decoded = 0
        self.kept = 0

    def spend(self, decoded: int, kept: np.ndarray) -> None:
        """Count one more image; refuse the batch once either limit is passed."""
        self.decoded += decoded
        self.kept += kept.nbytes
        if self.decoded > MAX_BATCH_PIXELS:
            raise BatchError(
                f"The images of {self.what} hold more than {MAX_BATCH_PIXELS / 1e6:,.0f} million "
                "pixels in all, more than one batch takes; split it into smaller batches."
            )
        if self.kept > MAX_BATCH_KEPT_BYTES:
            raise BatchError(
                f"The images of {self.what} take more than {MAX_BATCH_KEPT_BYTES // 1024**2:,} MB "
                "of memory even shrunk for the models, more than one batch may hold; split it "
                "into smaller batches."
            )


def _label_rows(labels_csv: Path | None) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """The label CSV through the one table parser (:mod:`explorer.data.table`), keyed by file name.

    A file of more than :data:`MAX_LABEL_ROWS` rows is refused before it is parsed.
    """
    from explorer.data.table import ManifestError, parse_label_table, read_frame, row_number

    if labels_csv is None:
        return {}, []
    name = Path(labels_csv).name
    try:
        frame = read_frame(labels_csv, "label file")
        if len(frame) > MAX_LABEL_ROWS:
            raise BatchError(
                f"{name} has {len(frame):,} rows; a label file takes at most "
                f"{MAX_LABEL_ROWS:,} (a batch holds at most {MAX_IMAGES:,} images), so keep "
                "only the rows of this batch's images."
            )
        table = parse_label_table(frame, name)
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
    """A manifest's rows as a batch (pixels read now, shrunk; :data:`MAX_IMAGES` at most).

    The manifest's problems become the batch's; an image that fails to decode is added to them.
    """
    if len(manifest) > MAX_IMAGES:
        raise BatchError(
            f"{manifest.name} holds {len(manifest):,} images; a batch takes at most {MAX_IMAGES:,}."
        )
    problems = [(p.row, p.reason) for p in manifest.problems]
    items, vecs = [], []
    budget = _Budget(manifest.name)
    for k, row in enumerate(manifest.rows):
        if progress:
            progress(k / max(len(manifest), 1), "reading images")
        try:
            pixels, decoded = _kept_pixels(row.path)
        except ExplorerError as err:
            problems.append((row.key, str(err)))
            continue
        budget.spend(decoded, pixels)
        items.append(BatchImage(row.key, pixels))
        vecs.append(_label_vector(row.labels))
    if not items:
        raise BatchError("None of the images could be read; see the reasons listed.")
    return _batch(manifest.name, items, np.stack(vecs), problems)


def read_batch(
    images: str | Path, labels_csv: str | Path | None = None, progress: Progress | None = None
) -> Batch:
    """A folder or ZIP of images (+ optional label CSV), ``"phantom:N"``, or a named manifest.

    ``images`` may be a registered manifest's name (``"nih-test"``, the shipped real test
    films; :mod:`explorer.data.named`). The label CSV is parsed by the one table parser,
    :func:`explorer.data.table.parse_label_table` (CheXpert or NIH column names).
    """
    from explorer.data.named import NAMED_MANIFESTS, named_manifest

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
    source = Path(images)
    with _image_entries(source) as (entries, others):
        if not entries:
            raise BatchError(f"{source.name} holds no PNG, JPEG or DICOM images.")
        if len(entries) > MAX_IMAGES:
            raise BatchError(
                f"{source.name} holds {len(entries):,} images; a batch takes at most "
                f"{MAX_IMAGES:,}."
            )
        label_rows, problems = _label_rows(Path(labels_csv) if labels_csv else None)
        problems = [(name, NOT_AN_IMAGE) for name in others] + problems
        seen: set[str] = set()
        items, vecs = [], []
        budget = _Budget(source.name)
        for k, entry in enumerate(entries):
            if progress:
                progress(k / len(entries), "reading images")
            if entry.name in seen:
                problems.append(
                    (entry.name, "another image has the same file name; this one is skipped")
                )
                continue
            seen.add(entry.name)
            try:
                pixels, decoded = _kept_pixels(entry.fetch())
            except (_UnreadableEntry, ExplorerError) as err:
                problems.append((entry.name, str(err)))
                continue
            budget.spend(decoded, pixels)
            items.append(BatchImage(entry.name, pixels))
            vecs.append(
                label_rows.get(entry.name, np.full(len(CHEXPERT_FINDINGS), np.nan, np.float32))
            )
    for name in sorted(set(label_rows) - seen):
        problems.append((name, "labelled in the CSV but not among the images"))
    if not items:
        raise BatchError("None of the images could be read; see the reasons listed.")
    return _batch(source.stem, items, np.stack(vecs).astype(np.float32), problems)


def phantom_batch(
    n: int, seed: int = PHANTOM_BATCH_SEED, progress: Progress | None = None
) -> Batch:
    """``n`` phantoms rendered on request, labelled with their ground truth."""
    from explorer.imaging import downscale
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
        name = SEEDED_NAME.format(seed=seed + k)  # the Attribution tab finds its masks by it
        items.append(BatchImage(name, downscale(ph.image)))
        rows.append(ph.labels())
    return _batch(f"phantom-{n}", items, labels_to_matrix(rows), [])


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

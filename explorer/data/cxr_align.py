"""Read the CXR-Align benchmark JSON (Ko et al.) against a MIMIC-CXR-JPG images root.

The released file is ``{"mimic": {id: {"chosen": finding, "report": text, "negation": text,
"omitted": text}}}``: per image, a report, the same report with the ``chosen`` present finding
negated, and with it omitted. CXR-Align ships no images; a credentialed user points
``images_root`` at their MIMIC-CXR-JPG copy, laid out ``files/p10/p10000032/s50414267/
<dicom_id>.jpg`` (patient folder ``p`` + subject_id under its first three characters, study
folder ``s`` + study_id, one JPEG per DICOM).

How an entry finds its image, first match wins:

1. an ``image`` key in the entry (a path, relative to ``images_root`` unless absolute);
2. an id that is itself a relative path (``files/p10/.../x.jpg`` or ``p10/.../x.jpg``);
3. the id as a ``dicom_id``: the JPEG of that name anywhere under ``images_root``;
4. the id as a ``study_id`` (``50414267`` or ``s50414267``): the first JPEG of that study.

For 3 and 4 the root is walked once (one pass, then a dictionary lookup per entry). The patient
is the ``p1...`` folder of the path. Each row's ``report`` is the original report; ``extra``
holds ``"chosen"``, ``"negation"`` and ``"omitted"`` for the benchmark's tasks A and B; its
label is the chosen finding, positive (the report affirms it).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from explorer.data.manifest import Manifest, ManifestProblem, ManifestRow
from explorer.data.table import ManifestError, nih_finding
from explorer.vocab.labels import KNOWN_FINDINGS

log = logging.getLogger(__name__)

TEXT_KEYS = ("report", "negation", "omitted")


class _Index:
    """JPEGs under a root by file stem and by study folder, built on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_stem: dict[str, Path] | None = None
        self._by_study: dict[str, Path] = {}

    def _build(self) -> None:
        self._by_stem = {}
        for p in sorted(self.root.rglob("*.jp*g")):
            self._by_stem.setdefault(p.stem, p)
            if p.parent.name.startswith("s"):
                self._by_study.setdefault(p.parent.name[1:], p)
        log.info("indexed %d JPEGs under %s", len(self._by_stem), self.root)

    def find(self, key: str) -> Path | None:
        if self._by_stem is None:
            self._build()
        assert self._by_stem is not None
        return self._by_stem.get(key) or self._by_study.get(key.removeprefix("s"))


def _patient(path: Path) -> str | None:
    return next((part[1:] for part in path.parts if re.fullmatch(r"p1\d{7}", part)), None)


def _resolve(key: str, entry: dict, root: Path, index: _Index) -> Path | None:
    given = entry.get("image")
    if given:
        p = Path(str(given)).expanduser()
        return p if p.is_absolute() else root / p
    if "/" in key:
        for candidate in (root / key, root / "files" / key):
            if candidate.is_file():
                return candidate
        return root / key
    return index.find(key)


def read_cxr_align(
    json_path: str | Path, images_root: str | Path, section: str = "mimic"
) -> Manifest:
    """The CXR-Align JSON as a :class:`Manifest` (see the module docstring for the id rule).

    Args:
        json_path: The released JSON.
        images_root: The MIMIC-CXR-JPG folder (the one holding ``files/``, or ``files/`` itself).
        section: The JSON's top-level key (``"mimic"``).

    Raises:
        ManifestError: The file is missing, is not JSON, or has no ``section`` mapping.
    """
    path, root = Path(json_path), Path(images_root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"No CXR-Align file at {path}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ManifestError(f"{path.name} is not a JSON file.") from None
    entries = data.get(section) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ManifestError(f"{path.name} has no '{section}' section of entries by id.")
    index = _Index(root)
    rows: list[ManifestRow] = []
    problems: list[ManifestProblem] = []
    seen: set[Path] = set()
    for key, entry in entries.items():
        where = f"{path.name} entry {key}"
        if not isinstance(entry, dict):
            problems.append(ManifestProblem(where, "the entry is not an object"))
            continue
        missing = [k for k in ("chosen", *TEXT_KEYS) if not str(entry.get(k) or "").strip()]
        if missing:
            problems.append(ManifestProblem(where, f"no {', '.join(missing)}"))
            continue
        finding = nih_finding(str(entry["chosen"]))
        if finding is None:
            problems.append(
                ManifestProblem(where, f"'{entry['chosen']}' is not a CheXpert finding")
            )
            continue
        image = _resolve(str(key), entry, root, index)
        if image is None or not image.is_file():
            problems.append(
                ManifestProblem(where, f"no MIMIC-CXR-JPG image for id {key} under {root}")
            )
            continue
        if image.resolve() in seen:
            problems.append(ManifestProblem(where, f"{image.name} is listed twice"))
            continue
        seen.add(image.resolve())
        rows.append(
            ManifestRow(
                key=str(key),
                path=image,
                labels={finding: 1},
                patient_id=_patient(image),
                report=str(entry["report"]).strip(),
                extra={
                    "chosen": finding,
                    "negation": str(entry["negation"]).strip(),
                    "omitted": str(entry["omitted"]).strip(),
                },
            )
        )
    chosen = {r.extra["chosen"] for r in rows}
    findings = tuple(f for f in KNOWN_FINDINGS if f in chosen)
    return Manifest(path.name, tuple(rows), tuple(problems), findings)

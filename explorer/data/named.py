"""Named manifests shipped in ``assets/`` (read offline on any machine), and the NIH training side.

``nih-test`` is a patient-disjoint held-out part of the NIH ChestX-ray14 films at 256 px
(``assets/nih-test/``, made by ``python -m explorer.data.nih_test``). It must never be trained
on: :func:`nih_train_manifest` is the shared NIH table minus every patient of ``nih-test``.
"""

from __future__ import annotations

from pathlib import Path

from explorer.data.manifest import Manifest
from explorer.paths import assets_dir, project_root

#: Registered name -> (table, images folder), relative to :func:`explorer.paths.assets_dir`.
NAMED_MANIFESTS: dict[str, tuple[str, str]] = {
    "nih-test": ("nih-test/labels.csv", "nih-test/images"),
}


def named_manifest(name: str, check: str = "header") -> Manifest:
    """A registered manifest (:data:`NAMED_MANIFESTS`), read from the shipped assets.

    Raises:
        ManifestError: The name is not registered or its files are missing.
    """
    from explorer.data.table import ManifestError, read_manifest

    if name not in NAMED_MANIFESTS:
        raise ManifestError(
            f"No manifest is registered as '{name}'; known: {', '.join(NAMED_MANIFESTS)}."
        )
    table, images = NAMED_MANIFESTS[name]
    path = assets_dir() / table
    if not path.is_file():
        raise ManifestError(f"The '{name}' manifest is not installed (no {path}).")
    return read_manifest(path, assets_dir() / images, check=check, name=name)


def shared_nih_dir() -> Path:
    """The developers' NIH ChestX-ray14 copy beside the project (``../shared/data/nih-cxr14``)."""
    return project_root().parent / "shared" / "data" / "nih-cxr14"


def nih_test_patients() -> frozenset[str]:
    """Every patient of the shipped ``nih-test`` set (none of them may be trained on)."""
    from explorer.data.table import read_frame

    frame = read_frame(assets_dir() / NAMED_MANIFESTS["nih-test"][0])
    return frozenset(str(p).strip() for p in frame["patient_id"])


def nih_train_manifest(
    table: str | Path | None = None, images_root: str | Path | None = None, check: str = "header"
) -> Manifest:
    """The NIH table minus every ``nih-test`` patient: the films that may be trained on.

    Args:
        table: The NIH labels table (default: :func:`shared_nih_dir` ``/labels.csv``).
        images_root: Its images (default: ``images/`` beside the table).
        check: How each image is checked (see :func:`explorer.data.table.read_manifest`).
    """
    from explorer.data.table import read_manifest

    path = Path(table) if table is not None else shared_nih_dir() / "labels.csv"
    root = Path(images_root) if images_root is not None else path.parent / "images"
    full = read_manifest(path, root, check=check)
    held_out = nih_test_patients()
    return Manifest(
        name=f"{full.name} (train: without nih-test patients)",
        rows=tuple(r for r in full.rows if r.patient not in held_out),
        problems=full.problems,
        findings=full.findings,
    )

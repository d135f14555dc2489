"""Seeded patient-level splits of a manifest: one patient is never on both sides."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from explorer.data.manifest import Manifest


def patient_rank(patient: str, seed: int) -> float:
    """A patient's place in the seeded draw, in [0, 1): the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _subset(manifest: Manifest, patients: set[str], keep: bool, suffix: str) -> Manifest:
    return Manifest(
        name=f"{manifest.name} ({suffix})",
        rows=tuple(r for r in manifest.rows if (r.patient in patients) == keep),
        problems=(),
        findings=manifest.findings,
    )


def patient_split(
    manifest: Manifest,
    test_fraction: float,
    seed: int = 0,
    *,
    always_test: Iterable[str] = (),
) -> tuple[Manifest, Manifest]:
    """Split a manifest by patient into ``(train, test)``.

    Patients are drawn in the order of :func:`patient_rank` (a hash of the seed and the patient
    id, so the draw does not depend on the table's order) and go to the test side, whole, until
    it holds about ``test_fraction`` of the rows. Rows whose patient is unknown count as their
    own patient (:attr:`ManifestRow.patient`).

    Args:
        manifest: The manifest to split.
        test_fraction: Share of rows on the test side, in (0, 1).
        seed: The draw's seed.
        always_test: Patients put on the test side first (e.g. every patient with a boxed
            film), before the seeded draw fills the rest.

    Returns:
        ``(train, test)``, each in the manifest's row order, with no patient in both.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
    films: dict[str, int] = {}
    for r in manifest.rows:
        films[r.patient] = films.get(r.patient, 0) + 1
    target = test_fraction * len(manifest.rows)
    forced = [p for p in dict.fromkeys(always_test) if p in films]
    drawn = sorted((p for p in films if p not in set(forced)), key=lambda p: patient_rank(p, seed))
    test: set[str] = set()
    count = 0
    for p in forced:
        test.add(p)
        count += films[p]
    for p in drawn:
        if count >= target:
            break
        if count + films[p] - target > target - count:  # overshoots more than it fills
            continue
        test.add(p)
        count += films[p]
    return _subset(manifest, test, False, "train"), _subset(manifest, test, True, "test")

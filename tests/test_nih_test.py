"""The shipped real test set: held out by patient, all boxed films in it, small, reproducible."""

from __future__ import annotations

import pytest
from conftest import SAMPLES_DIR

from explorer.data import named_manifest, nih_test_patients, nih_train_manifest
from explorer.data.nih_test import build
from explorer.paths import assets_dir

NIH_DIR = SAMPLES_DIR.parent / "nih-cxr14"
SHIPPED = assets_dir() / "nih-test"
needs_nih = pytest.mark.skipif(not NIH_DIR.is_dir(), reason="../shared/data/nih-cxr14 not present")


def test_shipped_set_is_small_labelled_and_carries_its_terms():
    m = named_manifest("nih-test", check="decode")
    assert len(m) == 300 and not m.problems
    assert all(r.pixels().shape == (256, 256) for r in m.rows[:5])
    assert nih_test_patients() == frozenset(m.patients())
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 15 * 1024**2
    readme = (SHIPPED / "README.md").read_text()
    assert "never be used for training" in readme and "Wang et al." in readme
    assert "NIH Clinical Center" in readme
    assert "nih-test/" in (assets_dir() / "README.md").read_text()


@needs_nih
def test_training_side_shares_no_patient_and_every_boxed_film_is_held_out():
    train = nih_train_manifest(NIH_DIR / "labels.csv")
    test = named_manifest("nih-test")
    assert not set(train.patients()) & set(test.patients())
    assert len(train) + len(test) == 1285
    assert not any(r.boxes for r in train)
    assert sum(1 for r in test if r.boxes) == 38


@needs_nih
def test_the_set_is_remade_byte_for_byte(tmp_path):
    made = build(NIH_DIR, tmp_path, films=300, seed=0, size=256)
    assert len(made) == 300
    assert (tmp_path / "labels.csv").read_bytes() == (SHIPPED / "labels.csv").read_bytes()
    names = sorted(p.name for p in (SHIPPED / "images").glob("*.png"))
    assert names == sorted(p.name for p in (tmp_path / "images").glob("*.png"))
    for name in names[:10]:
        assert (tmp_path / "images" / name).read_bytes() == (SHIPPED / "images" / name).read_bytes()
    box = next(r for r in made if r.boxes).boxes[0]
    assert 0 < box.x < 256 and box.x + box.w <= 257


@needs_nih
def test_boxes_are_scaled_with_the_films():
    from explorer.data import read_manifest

    full = {r.key: r for r in read_manifest(NIH_DIR / "labels.csv", NIH_DIR / "images")}
    for row in (r for r in named_manifest("nih-test") if r.boxes):
        for small, big in zip(row.boxes, full[row.key].boxes, strict=True):
            assert small.finding == big.finding
            assert small.x == pytest.approx(big.x * 256 / 384, abs=0.06)
            assert small.h == pytest.approx(big.h * 256 / 384, abs=0.06)


def test_package_data_ships_every_file_of_the_set():
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from explorer.paths import checkout_root

    root = checkout_root()
    if root is None:
        pytest.skip("not a checkout")
    data = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["explorer.assets"]
    files = [p.relative_to(root / "assets").as_posix() for p in SHIPPED.rglob("*") if p.is_file()]
    assert len(files) == 302
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files)

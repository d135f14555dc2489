"""Manifest tables: every bad row named with its reason, NIH and CheXpert naming, patient splits."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from conftest import SAMPLES_DIR

from explorer.data import (
    ManifestError,
    named_manifest,
    patient_split,
    read_manifest,
)
from explorer.data.table import parse_boxes
from explorer.paths import assets_dir

NIH_DIR = SAMPLES_DIR.parent / "nih-cxr14"
TEST_IMAGES = assets_dir() / "nih-test" / "images"
NIH_HEADER = (
    "file,patient_id,view,Atelectasis,Cardiomegaly,Effusion,Mass,Nodule,Pneumonia,"
    "No Finding,boxes_xywh\n"
)


def _films(k: int) -> list[str]:
    return sorted(p.name for p in TEST_IMAGES.glob("*.png"))[:k]


@pytest.fixture()
def planted(tmp_path):
    """A table in NIH naming with one good row and one row of each kind of fault."""
    images = tmp_path / "images"
    images.mkdir()
    a, b, c, d = _films(4)
    for name in (a, b, c, d):
        shutil.copy(TEST_IMAGES / name, images / name)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    (images / "trunc.png").write_bytes((TEST_IMAGES / a).read_bytes()[:2000])
    table = tmp_path / "labels.csv"
    table.write_text(
        NIH_HEADER
        + f"{a},1,PA,0,1,0,0,0,0,0,Cardiomegaly:10 20 30 40\n"  # good, with a box
        + "missing.png,2,PA,0,0,0,0,0,0,1,\n"  # row 3: no such file
        + "broken.png,3,PA,0,0,0,0,0,0,1,\n"  # row 4: not an image
        + f"{b},4,AP,0,0,2,0,0,0,0,\n"  # row 5: bad label value
        + f"{a},1,PA,0,1,0,0,0,0,0,\n"  # row 6: the same file again
        + f"{c},5,PA,0,0,0,1,0,0,0,Mass:200 200 100 100\n"  # row 7: box outside 256 px
        + f"{d},6,PA,0,0,0,0,1,0,0,Nodule:1 2 3\n"  # row 8: box that does not parse
        + "trunc.png,7,PA,0,0,0,0,0,0,1,\n"  # row 9: truncated PNG
        + ",8,PA,0,0,0,0,0,0,1,\n"  # row 10: no file name
        + f"{d},9,PA,0,0,0,0,0,1,0,\n"  # row 11: good (its first row was bad)
    )
    return table, images


def test_each_bad_row_is_named_with_its_reason_and_the_rest_is_read(planted):
    table, images = planted
    m = read_manifest(table, images)
    reasons = {p.row.split(" (")[0]: p.reason for p in m.problems}
    assert "no image at" in reasons["labels.csv row 3"]
    assert "unreadable image" in reasons["labels.csv row 4"]
    assert reasons["labels.csv row 5"] == "'Effusion' is '2', not 1, 0 or blank"
    assert "listed twice" in reasons["labels.csv row 6"]
    assert "outside the 256 x 256 image" in reasons["labels.csv row 7"]
    assert "not 'Finding:x y w h'" in reasons["labels.csv row 8"]
    assert "unreadable image" in reasons["labels.csv row 9"]
    assert reasons["labels.csv row 10"] == "no file name"
    assert len(m.problems) == 8
    a, b, _, d = _films(4)
    assert [int(p.row.split()[2]) for p in m.problems] == [3, 4, 5, 6, 7, 8, 9, 10]  # table order
    assert m.problems[2].row == f"labels.csv row 5 ({b})"  # named by number and file
    assert [r.key for r in m.rows] == [a, d]
    first = m.rows[0]
    assert first.labels["Cardiomegaly"] == 1 and first.labels["Pleural Effusion"] == 0
    assert first.boxes[0].finding == "Cardiomegaly" and first.patient_id == "1"
    assert first.view == "PA" and first.path == images / a
    assert first.pixels().shape == (256, 256)


def test_exists_check_skips_the_image_checks_and_decode_agrees_with_header(planted):
    table, images = planted
    quick = read_manifest(table, images, check="exists")
    assert "broken.png" in {r.key for r in quick.rows}  # not opened
    full = read_manifest(table, images, check="decode")
    assert {r.key for r in full.rows} == {r.key for r in read_manifest(table, images).rows}


def test_nih_labels_map_to_chexpert_findings(tmp_path):
    (a,) = _films(1)
    shutil.copy(TEST_IMAGES / a, tmp_path / a)
    table = tmp_path / "t.csv"
    table.write_text(NIH_HEADER + f"{a},1,PA,0,0,,0,1,0,0,\n")
    labels = read_manifest(table).rows[0].labels
    assert labels["Lung Lesion"] == 1  # Nodule 1, Mass 0: any positive
    assert labels["Pleural Effusion"] is None  # blank
    assert labels["Atelectasis"] == 0 and "Fracture" not in labels
    table.write_text(NIH_HEADER + f"{a},1,PA,0,0,0,0,0,0,1,\n")
    assert read_manifest(table).rows[0].labels["Lung Lesion"] == 0  # both 0: negative
    table.write_text(NIH_HEADER + f"{a},1,PA,0,0,0,,0,0,1,\n")
    assert read_manifest(table).rows[0].labels["Lung Lesion"] is None  # one blank, none 1


def test_chexpert_naming_tsv_parquet_and_the_nih_finding_list(tmp_path):
    import pandas as pd

    a, b = _films(2)
    for name in (a, b):
        shutil.copy(TEST_IMAGES / name, tmp_path / name)
    frame = pd.DataFrame(
        {
            "Path": [a, b],
            "Pleural Effusion": ["1.0", "-1.0"],
            "Lung Opacity": ["", "0"],
            "Report": ["Small left effusion.", "Possible effusion."],
        }
    )
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    for name in ("t.tsv", "t.parquet"):
        m = read_manifest(tmp_path / name)
        assert not m.problems and m.findings == ("Lung Opacity", "Pleural Effusion")
        assert [r.labels["Pleural Effusion"] for r in m] == [1, -1]
        assert m.rows[0].labels["Lung Opacity"] is None and m.rows[1].labels["Lung Opacity"] == 0
        assert m.rows[0].report == "Small left effusion."
    (tmp_path / "entry.csv").write_text(
        f"Image Index,Finding Labels,Patient ID\n{a},Effusion|Nodule,7\n{b},No Finding,8\n"
    )
    m = read_manifest(tmp_path / "entry.csv")
    assert m.rows[0].labels["Pleural Effusion"] == 1 and m.rows[0].labels["Lung Lesion"] == 1
    assert m.rows[1].labels["No Finding"] == 1 and m.rows[1].labels["Pleural Effusion"] == 0
    assert m.rows[0].patient_id == "7"


def test_unusable_tables_get_a_sentence(tmp_path):
    with pytest.raises(ManifestError, match="No table at"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "t.csv").write_text("x,Edema\na,1\n")
    with pytest.raises(ManifestError, match="needs a column naming each image"):
        read_manifest(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("file,colour\na,red\n")
    with pytest.raises(ManifestError, match="no column named after a CheXpert finding"):
        read_manifest(tmp_path / "t.csv")
    with pytest.raises(ManifestError, match="no column 'picture'"):
        read_manifest(tmp_path / "t.csv", file_column="picture")


def test_boxes_parse_as_the_nih_readme_writes_them():
    boxes = parse_boxes("Effusion:1 2 3 4|Infiltrate:5.5 6 7 8")
    assert [(b.finding, b.x, b.h) for b in boxes] == [
        ("Pleural Effusion", 1.0, 4.0),
        ("Lung Opacity", 5.5, 8.0),
    ]
    for bad in ("Unicorn:1 2 3 4", "Mass:1 2 0 4", "Mass:a b c d"):
        with pytest.raises(ValueError):
            parse_boxes(bad)


def test_the_named_test_set_reads_offline():
    m = read_manifest("nih-test")
    assert m.name == "nih-test" and len(m) == 300 and not m.problems
    assert [r.key for r in m] == [r.key for r in named_manifest("nih-test")]
    boxed = [r for r in m if r.boxes]
    assert len(boxed) == 38
    assert all(b.x + b.w <= 257 and b.y + b.h <= 257 for r in boxed for b in r.boxes)


def test_patient_split_never_puts_a_patient_on_both_sides():
    m = read_manifest("nih-test")
    train, test = patient_split(m, 0.3, seed=1)
    assert not set(train.patients()) & set(test.patients())
    assert len(train) + len(test) == len(m)
    assert abs(len(test) / len(m) - 0.3) < 0.03
    again = patient_split(m, 0.3, seed=1)[1]
    assert [r.key for r in again] == [r.key for r in test]
    other = patient_split(m, 0.3, seed=2)[1]
    assert [r.key for r in other] != [r.key for r in test]
    forced = m.rows[-1].patient
    assert forced in patient_split(m, 0.1, seed=1, always_test=[forced])[1].patients()
    with pytest.raises(ValueError):
        patient_split(m, 1.5)


@pytest.mark.skipif(not NIH_DIR.is_dir(), reason="../shared/data/nih-cxr14 not present")
def test_the_shared_nih_table_reads_without_problems_and_splits_by_patient():
    start = time.perf_counter()
    m = read_manifest(NIH_DIR / "labels.csv", NIH_DIR / "images")
    assert time.perf_counter() - start < 30
    assert len(m) == 1285 and not m.problems
    assert sum(1 for r in m if r.boxes) == 38
    assert sum(r.labels["Pneumonia"] == 1 for r in m) == 416
    lesion = sum(r.labels["Lung Lesion"] == 1 for r in m)
    assert 87 <= lesion <= 87 + 65
    train, test = patient_split(m, 0.2, seed=0)
    assert not set(train.patients()) & set(test.patients())
    assert abs(len(test) / len(m) - 0.2) < 0.02
    assert isinstance(m.rows[0].path, Path) and m.rows[0].path.is_file()

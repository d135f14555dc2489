"""The CXR-Align JSON, in the released schema, against a MIMIC-CXR-JPG-shaped folder."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from explorer.data import ManifestError, read_cxr_align
from explorer.paths import assets_dir

FILMS = sorted((assets_dir() / "nih-test" / "images").glob("*.png"))[:3]
DICOM_IDS = (
    "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
    "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962",
    "2a2277a9-b0ded155-c0de8eb9-5c9a1ab2-be3fb1c7",
)
LAYOUT = (
    ("p10/p10000032/s50414267", DICOM_IDS[0]),
    ("p10/p10000032/s53189527", DICOM_IDS[1]),
    ("p11/p11000011/s51234567", DICOM_IDS[2]),
)


@pytest.fixture()
def mimic(tmp_path):
    """Three shipped films saved as MIMIC-CXR-JPG lays them out: files/pXX/pSUBJECT/sSTUDY/."""
    root = tmp_path / "mimic-cxr-jpg"
    for film, (folder, dicom_id) in zip(FILMS, LAYOUT, strict=True):
        target = root / "files" / folder
        target.mkdir(parents=True)
        Image.open(film).convert("L").save(target / f"{dicom_id}.jpg", "JPEG", quality=90)
    return root


def _entry(chosen, **more):
    return {
        "chosen": chosen,
        "report": f"There is {chosen.lower()}. No pneumothorax.",
        "negation": f"There is no {chosen.lower()}. No pneumothorax.",
        "omitted": "No pneumothorax.",
        **more,
    }


def test_released_schema_reads_and_names_the_bad_entries(mimic, tmp_path):
    doc = {
        "mimic": {
            DICOM_IDS[0]: _entry("Pleural Effusion"),  # a dicom_id
            "s53189527": _entry("Cardiomegaly"),  # a study id
            "any-key": _entry(
                "Atelectasis", image=f"files/{LAYOUT[2][0]}/{DICOM_IDS[2]}.jpg"
            ),  # an explicit image key
            "ffffffff-00000000-00000000-00000000-00000000": _entry("Edema"),  # not on disk
            DICOM_IDS[1]: _entry("Unicorn lung"),  # not a finding
            "no-texts": {"chosen": "Edema", "report": "Edema."},
        }
    }
    path = tmp_path / "cxr_align.json"
    path.write_text(json.dumps(doc))
    m = read_cxr_align(path, mimic)
    assert [r.key for r in m] == [DICOM_IDS[0], "s53189527", "any-key"]
    first = m.rows[0]
    assert first.path.name == f"{DICOM_IDS[0]}.jpg" and first.patient_id == "10000032"
    assert first.labels == {"Pleural Effusion": 1}
    assert first.report.startswith("There is pleural effusion")
    assert first.extra["negation"].startswith("There is no pleural effusion")
    assert (
        first.extra["omitted"] == "No pneumothorax." and first.extra["chosen"] == "Pleural Effusion"
    )
    assert m.rows[1].path.parent.name == "s53189527"
    assert m.rows[2].patient_id == "11000011"
    assert m.findings == ("Cardiomegaly", "Atelectasis", "Pleural Effusion")
    reasons = {p.row.rpartition(" ")[2]: p.reason for p in m.problems}
    assert "no MIMIC-CXR-JPG image" in reasons["ffffffff-00000000-00000000-00000000-00000000"]
    assert "not a CheXpert finding" in reasons[DICOM_IDS[1]]
    assert reasons["no-texts"] == "no negation, omitted"
    assert first.pixels().shape == (256, 256)


def test_unusable_files_get_a_sentence(tmp_path):
    with pytest.raises(ManifestError, match="No CXR-Align file"):
        read_cxr_align(tmp_path / "none.json", tmp_path)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not a JSON file"):
        read_cxr_align(tmp_path / "x.json", tmp_path)
    (tmp_path / "x.json").write_text('{"chexpert": {}}')
    with pytest.raises(ManifestError, match="no 'mimic' section"):
        read_cxr_align(tmp_path / "x.json", tmp_path)

"""Batch error analysis: reading labelled batches (with broken parts), verdicts and metrics."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import zipfile

import numpy as np
import pytest
from conftest import default_model_ready
from PIL import Image

from explorer import imaging
from explorer.cli import main
from explorer.eval import batch as batch_module
from explorer.eval.batch import (
    MAX_PROBLEMS,
    ZIP_DAMAGED,
    ZIP_ENCRYPTED,
    ZIP_METHOD,
    BatchError,
    BatchImage,
    Case,
    Evaluation,
    evaluate,
    flips,
    phantom_batch,
    read_batch,
)
from explorer.eval.metrics import auc_score
from explorer.models import ModelRegistry
from explorer.models.tiny import build_tiny_specs
from explorer.vocab.labels import CHEXPERT_FINDINGS

REAL = ("00000001_000.png", "16747_3_1.jpg", "siim-pneumothorax-sample.dcm")


@pytest.fixture()
def folder(tmp_path, samples_dir):
    d = tmp_path / "batch"
    d.mkdir()
    for name in REAL:
        shutil.copy(samples_dir / name, d / name)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    (d / "notes.txt").write_text("not an image, named among the problems")
    return d


@pytest.fixture()
def labels(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        "filename,Pleural Effusion,Pneumothorax,Cardiomegaly\n"
        "00000001_000.png,0,0,1\n"
        "16747_3_1.jpg,1,,\n"
        "siim-pneumothorax-sample.dcm,0,yes,0\n"  # bad value: the row is reported
        "missing.png,1,0,0\n"  # labelled but absent
        ",1,1,1\n"  # no file name
        "00000001_000.png,1,1,1\n"  # labelled twice
    )
    return path


def test_batch_reports_each_problem_and_runs_the_rest(folder, labels):
    batch = read_batch(folder, labels)
    assert [im.name for im in batch.images] == sorted(REAL)
    reasons = dict(batch.problems)
    assert "broken.png" in reasons and "image" in reasons["broken.png"].lower()
    assert "not 1, 0, -1 or blank" in reasons["labels.csv row 4"]
    assert reasons["labels.csv row 6"] == "no file name"
    assert "labelled twice" in reasons["labels.csv row 7"]
    assert "not among the images" in reasons["missing.png"]
    assert reasons["notes.txt"].startswith("not an image file")  # named, not skipped silently
    by_name = {im.name: k for k, im in enumerate(batch.images)}
    row = batch.labels[by_name["00000001_000.png"]]
    assert row[CHEXPERT_FINDINGS.index("Cardiomegaly")] == 1
    assert row[CHEXPERT_FINDINGS.index("Pleural Effusion")] == 0
    assert np.isnan(batch.labels[by_name["siim-pneumothorax-sample.dcm"]]).all()  # bad row


def test_zip_reads_like_the_folder(folder, labels, tmp_path):
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in folder.iterdir():
            zf.write(p, f"inner/{p.name}")
        zf.writestr("__MACOSX/._00000001_000.png", b"junk")
    a, b = read_batch(folder, labels), read_batch(archive, labels)
    assert [i.name for i in a.images] == [i.name for i in b.images]
    assert a.problems == b.problems  # the same reasons; the __MACOSX copy is not one of them
    assert np.array_equal(a.labels, b.labels, equal_nan=True)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty", "holds no PNG, JPEG or DICOM"),
        ("notzip", "not a ZIP archive"),
        ("noname", "needs a column naming each image"),
        ("nofinding", "no column named after a CheXpert finding"),
    ],
)
def test_unusable_batches_get_a_sentence(tmp_path, folder, setup, message):
    labels = None
    images = folder
    if setup == "empty":
        images = tmp_path / "empty"
        images.mkdir()
    elif setup == "notzip":
        images = tmp_path / "x.zip"
        images.write_text("hello")
    elif setup == "noname":
        labels = tmp_path / "l.csv"
        labels.write_text("x,Edema\na,1\n")
    else:
        labels = tmp_path / "l.csv"
        labels.write_text("file,colour\na,red\n")
    with pytest.raises(BatchError, match=message):
        read_batch(images, labels)


def test_negation_errors_and_confidence():
    pos_wrong = Case("a", "Edema", 1.0, 0.2, -0.1, False)
    neg_wrong = Case("a", "Edema", 0.0, 0.9, 0.1, False)
    right = Case("a", "Edema", 1.0, 0.7, 0.1, False)
    blank = Case("a", "Edema", float("nan"), 0.9, 0.1, False)
    assert pos_wrong.negation_error and neg_wrong.negation_error
    assert not right.negation_error and not blank.negation_error
    assert pos_wrong.error_confidence == pytest.approx(0.6)
    assert right.error_confidence == 0.0
    ev = Evaluation("m", ("there_is",), "b", (right, pos_wrong, neg_wrong, blank))
    frame = ev.to_frame()
    assert list(frame["error confidence"])[:2] == [pytest.approx(0.8), pytest.approx(0.6)]
    assert len(ev.to_frame(errors_only=True)) == 2
    assert np.isnan(ev.metrics(0.5).set_index("finding").loc["Edema", "AUC"])  # 2 + 1 cases
    metrics = ev.metrics(0.5, min_cases=1).set_index("finding").loc["Edema"]
    assert (metrics["positives"], metrics["negatives"], metrics["negation errors"]) == (2, 1, 2)
    assert metrics["AUC"] == pytest.approx(0.0)  # positives 0.7, 0.2 both below negative 0.9
    assert metrics["accuracy@0.5"] == pytest.approx(1 / 3, abs=1e-3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    specs = build_tiny_specs(tmp_path_factory.mktemp("tiny"))
    return ModelRegistry(specs, default="tiny-clip").load("tiny-clip", "cpu")


def test_evaluate_phantom_batch_metrics_match_a_direct_computation(tiny):
    batch = phantom_batch(12)
    assert len(batch) == 12 and not batch.problems
    steps = []
    ev = evaluate(tiny, batch, templates=["there_is"], progress=lambda f, m: steps.append(f))
    assert len(ev.cases) == 12 * 14 and ev.templates == ("there_is",) and len(steps) == 12
    j = CHEXPERT_FINDINGS.index("Cardiomegaly")
    cs = [c for c in ev.cases if c.finding == "Cardiomegaly"]
    y = batch.labels[:, j] == 1
    p = np.array([c.prob_affirmed for c in cs])
    expected = auc_score(y, p)
    got = ev.metrics(min_cases=1).set_index("finding").loc["Cardiomegaly", "AUC"]
    assert got == pytest.approx(expected, abs=1e-4)
    # by default an AUC needs 10 positive and 10 negative cases: 12 images have too few
    assert ev.metrics()["AUC"].isna().all()
    bins = ev.calibration(5)
    labelled = sum(1 for c in ev.cases if c.label in (0.0, 1.0))
    assert sum(b["cases"] for b in bins) == labelled
    assert flips(ev, ev).empty
    other = Evaluation(
        "other",
        ev.templates,
        ev.batch,
        tuple(
            Case(c.image, c.finding, c.label, 1 - c.prob_affirmed, -c.margin, c.negation_blind)
            for c in ev.cases
        ),
    )
    changed = flips(ev, other)
    decided = [c for c in ev.cases if c.label in (0.0, 1.0) and c.prob_affirmed != 0.5]
    assert len(changed) == len(decided)


@pytest.mark.skipif(not default_model_ready(), reason="embedded default model not built")
def test_evaluate_cli_writes_cases_with_model_and_templates(tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "report.csv"
    assert main(["evaluate", "--images", "phantom:8", "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == 8 and data["model"] == "real-negaware"
    assert {m["finding"] for m in data["metrics"]} == set(CHEXPERT_FINDINGS)
    frame = pd.read_csv(out)
    assert len(frame) == 8 * 14
    assert set(frame["model"]) == {"real-negaware"} and frame["templates"].iloc[0]


def test_batch_csv_is_read_by_the_manifest_parser_in_nih_naming_too(folder, tmp_path):
    labels = tmp_path / "nih.csv"
    labels.write_text(
        "Image Index,Effusion,Mass,Nodule\n00000001_000.png,1,0,1\n16747_3_1.jpg,0,0,0\n"
    )
    batch = read_batch(folder, labels)
    by_name = {im.name: k for k, im in enumerate(batch.images)}
    row = batch.labels[by_name["00000001_000.png"]]
    assert row[CHEXPERT_FINDINGS.index("Pleural Effusion")] == 1
    assert row[CHEXPERT_FINDINGS.index("Lung Lesion")] == 1
    assert batch.labels[by_name["16747_3_1.jpg"], CHEXPERT_FINDINGS.index("Lung Lesion")] == 0


def test_the_shipped_nih_test_films_are_a_batch():
    batch = read_batch("nih-test")
    assert len(batch) == 300 and not batch.problems and batch.name == "nih-test"
    j = CHEXPERT_FINDINGS.index("Pneumonia")
    assert int((batch.labels[:, j] == 1).sum()) == 113
    assert np.isnan(batch.labels[:, CHEXPERT_FINDINGS.index("Support Devices")]).all()


@pytest.mark.skipif(not default_model_ready(), reason="embedded default model not built")
def test_evaluate_cli_reads_a_manifest(tmp_path, capsys):
    from explorer.paths import assets_dir

    images = assets_dir() / "nih-test" / "images"
    names = sorted(p.name for p in images.glob("*.png"))[:3]
    table = tmp_path / "m.csv"
    table.write_text(
        "file,Effusion,Pneumonia\n" + "".join(f"{n},0,1\n" for n in names) + "ghost.png,1,0\n"
    )
    args = ["evaluate", "--manifest", str(table), "--images-root", str(images), "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == 3
    assert [p["reason"][:11] for p in data["problems"]] == ["no image at"]
    assert main(["evaluate"]) != 0
    assert "--images, or a labelled table with --manifest" in capsys.readouterr().err


# --- hostile archives and tables -------------------------------------------------------------


def _png(shape: tuple[int, int], value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_a_tiny_zip_of_huge_images_keeps_only_shrunk_pixels(tmp_path):
    """Three 24-36 megapixel PNGs in a ZIP of a few kB: the batch keeps each at most
    MAX_KEPT_SIDE a side, and neither their bytes nor their full-size pixels."""
    archive = tmp_path / "huge.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.png", _png((6000, 6000)))
        zf.writestr("b.png", _png((4000, 6000), 255))
        zf.writestr("c.png", _png((6000, 4000)))
    assert archive.stat().st_size < 100_000
    batch = read_batch(archive)
    shapes = {im.name: im.pixels.shape for im in batch.images}
    side = imaging.MAX_KEPT_SIDE
    short = round(side * 4000 / 6000)  # the aspect ratio is kept
    assert shapes == {"a.png": (side, side), "b.png": (short, side), "c.png": (side, short)}
    assert {f.name for f in dataclasses.fields(BatchImage)} == {"name", "pixels"}
    for im in batch.images:
        assert im.pixels.dtype == np.float32 and im.pixels.base is None  # no view of a full one
        assert not any(isinstance(getattr(im, f), (bytes, bytearray)) for f in ("name", "pixels"))
    assert batch.images[1].pixels.min() == pytest.approx(1.0, abs=1e-5)
    png = Image.open(io.BytesIO(batch.images[1].png_bytes()))  # what the drill-down opens
    assert png.size == (side, short) and png.mode == "L"


def test_the_pixel_budget_of_a_batch(tmp_path, monkeypatch):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for k in range(3):
            zf.writestr(f"{k}.png", _png((100, 100)))
    monkeypatch.setattr(batch_module, "MAX_BATCH_PIXELS", 25_000)
    with pytest.raises(BatchError, match="more than 0 million pixels in all"):
        read_batch(archive)
    monkeypatch.setattr(batch_module, "MAX_BATCH_PIXELS", 30_000)
    assert len(read_batch(archive)) == 3
    monkeypatch.setattr(batch_module, "MAX_BATCH_KEPT_BYTES", 100_000)  # 40,000 B an image
    with pytest.raises(BatchError, match="take more than 0 MB of memory even shrunk"):
        read_batch(archive)


def patch_zip_entry(data: bytes, name: str, *, flag: int = 0, method: int | None = None) -> bytes:
    """``data`` (a ZIP) with ``flag`` or-ed into, and ``method`` written over, the general
    purpose flags and compression method of ``name``, in its local and its central header."""
    out = bytearray(data)
    encoded = name.encode()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        local = zf.getinfo(name).header_offset
    central = int.from_bytes(data[-6:-2], "little")  # the end record's directory offset
    while data[central + 46 : central + 46 + len(encoded)] != encoded:
        central = data.index(b"PK\x01\x02", central + 46)
    for flags_at in (local + 6, central + 8):
        out[flags_at] |= flag
        if method is not None:
            out[flags_at + 2 : flags_at + 4] = method.to_bytes(2, "little")
    return bytes(out)


def test_unreadable_zip_entries_are_listed_with_a_reason_and_never_logged(tmp_path, caplog):
    """An encrypted entry, one with an unknown compression method and one whose deflate data
    is damaged each become a problem row; the batch runs on the rest, and no log line names
    them (file names are often patient identifiers)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("good.png", _png((64, 64), 90))
        for name in ("PHI-123456-encrypted.png", "PHI-234567-method.png", "PHI-345678-damaged.png"):
            zf.writestr(name, _png((64, 64), 30) + bytes(5000))
    data = buf.getvalue()
    data = patch_zip_entry(data, "PHI-123456-encrypted.png", flag=0x1)
    data = patch_zip_entry(data, "PHI-234567-method.png", method=99)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("PHI-345678-damaged.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    damaged = bytearray(data)
    damaged[start] = 0xFF  # a deflate block of the reserved type 3
    archive = tmp_path / "PHI-999999.zip"
    archive.write_bytes(bytes(damaged))
    with caplog.at_level(logging.DEBUG):
        batch = read_batch(archive)
    assert [im.name for im in batch.images] == ["good.png"]
    assert dict(batch.problems) == {
        "PHI-123456-encrypted.png": ZIP_ENCRYPTED,
        "PHI-234567-method.png": ZIP_METHOD,
        "PHI-345678-damaged.png": ZIP_DAMAGED,
    }
    assert "PHI" not in caplog.text
    archive.write_bytes(patch_zip_entry(bytes(damaged), "good.png", flag=0x1))
    with pytest.raises(BatchError, match="None of the images could be read"):
        read_batch(archive)  # nothing readable: one sentence, still no exception of zipfile's


def test_an_entry_larger_than_an_image_may_be_is_not_unpacked(tmp_path, monkeypatch):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("small.png", _png((64, 64)))
        zf.writestr("big.png", _png((64, 64)) + bytes(100_000))
    monkeypatch.setattr(imaging, "MAX_FILE_BYTES", 50_000)
    batch = read_batch(archive)
    assert [im.name for im in batch.images] == ["small.png"]
    assert dict(batch.problems)["big.png"].startswith("larger than the 0 MB one image may be")


def test_a_label_file_beyond_the_row_limit_is_refused_before_parsing(folder, tmp_path):
    labels = tmp_path / "labels.csv"
    rows = "".join(f"x{k}.png,1\n" for k in range(batch_module.MAX_LABEL_ROWS + 1))
    labels.write_text("filename,Edema\n" + rows)
    with pytest.raises(BatchError, match="has 20,001 rows; a label file takes at most 20,000"):
        read_batch(folder, labels)


def test_the_problems_list_is_capped_with_a_count(folder, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,Edema\n" + "".join(f"x{k}.png,1\n" for k in range(250)))
    batch = read_batch(folder, labels)
    total = 250 + 2  # 250 labelled files that are not there, broken.png and notes.txt
    assert len(batch.problems) == MAX_PROBLEMS + 1
    assert batch.problems_not_listed == total - MAX_PROBLEMS
    assert batch.problem_count == total
    assert batch.problems[-1][1].startswith(f"{total - MAX_PROBLEMS} more problems")
    assert len(phantom_batch(2).problems) == 0

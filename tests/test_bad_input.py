"""Hostile and broken inputs sent through the real server with ``gradio_client``.

Every case must come back with a clear message (a sentence naming what was wrong, no
traceback), or, for odd but valid input, with a result; and the server must answer a normal
request right after. The table below is the list the production-readiness note reports.
"""

from __future__ import annotations

import io
import logging
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio = pytest.importorskip("gradio")
from conftest import default_model_ready  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from pydicom import uid  # noqa: E402
from test_batch import patch_zip_entry  # noqa: E402
from test_imaging import (  # noqa: E402
    encapsulated_dicom,
    make_dicom,
    png_bytes,
    png_header_only,
)

from explorer.paths import examples_dir  # noqa: E402

EXAMPLES_DIR = examples_dir()

pytestmark = pytest.mark.skipif(
    not default_model_ready(), reason="embedded default model not built"
)

GOOD_PNG = EXAMPLES_DIR / "00000001_000.png"
MODEL = "phantom-negaware"
TEMPLATES = ["there_is", "bare"]
OWN_TABLE = "Your own table (CSV / Parquet upload)"
UPLOADED = "My images (ZIP) + labels (CSV)"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.open(GOOD_PNG).convert("L").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _float_tiff() -> bytes:
    buf = io.BytesIO()
    ramp = np.linspace(-3.5, 1200.0, 96 * 96, dtype=np.float32).reshape(96, 96)
    Image.fromarray(ramp, mode="F").save(buf, "TIFF")
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _huge_dicom() -> bytes:
    data = make_dicom(np.zeros((64, 64), dtype=np.uint8))
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    ds.Rows, ds.Columns = 20000, 20000
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _deflate_bomb_dicom() -> bytes:
    """A Deflated DICOM of under 1 MB, without its (0002,0000) group length, whose data set
    inflates to 600 MB (more than the 512 MB the guard lets through)."""
    data = make_dicom(np.zeros((8, 8), dtype=np.uint8), tsyntax=uid.DeflatedExplicitVRLittleEndian)
    body = 144 + int.from_bytes(data[140:144], "little")  # the end of the file meta
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 24)
    stream = b"".join(packer.compress(zeros) for _ in range(600 * 1024**2 // len(zeros)))
    return data[:132] + data[144:body] + stream + packer.flush()


def _unreadable_entries_zip(*, good: bool) -> bytes:
    """A ZIP whose entries are encrypted, of an unknown method and damaged (plus a good PNG)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if good:
            zf.writestr("good.png", PNG)
        for name in ("PHI-123456-encrypted.png", "PHI-234567-method.png", "PHI-345678-damaged.png"):
            zf.writestr(name, PNG[:200] + bytes(5000))
    data = patch_zip_entry(buf.getvalue(), "PHI-123456-encrypted.png", flag=0x1)
    data = patch_zip_entry(data, "PHI-234567-method.png", method=99)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("PHI-345678-damaged.png")
    damaged = bytearray(data)
    damaged[info.header_offset + 30 + len(info.filename) + len(info.extra)] = 0xFF
    return bytes(damaged)


@dataclass(frozen=True)
class Case:
    """One bad input: the file(s) it sends, the endpoint, and what the answer must say."""

    id: str
    endpoint: str
    expect: str  # a fragment of the error message, or "ok"
    name: str = ""
    data: Callable[[], bytes] | None = None
    args: tuple = ()


GOOD = b""  # marker: send the good sample image
RAMP16 = (np.arange(128 * 128, dtype=np.uint32) * 3 % 65536).astype(np.uint16).reshape(128, 128)
FRAMES = np.stack([np.full((64, 64), v, dtype=np.uint8) for v in (10, 128, 250)])
JPEG = _jpeg()
PNG = GOOD_PNG.read_bytes()

CASES = [
    # --- image files (inspect: the endpoint every upload goes through) ---
    Case("zero-bytes", "/inspect", "file is empty", "scan.png", lambda: b""),
    Case("truncated-png", "/inspect", "damaged or incomplete", "scan.png", lambda: PNG[:300]),
    Case(
        "corrupt-png",
        "/inspect",
        "damaged or incomplete",
        "scan.png",
        lambda: PNG[:120] + bytes(4000),
    ),
    Case("truncated-jpeg", "/inspect", "damaged or incomplete", "scan.jpg", lambda: JPEG[:2000]),
    Case(
        "corrupt-jpeg",
        "/inspect",
        "damaged or incomplete",
        "scan.jpg",
        lambda: JPEG[:4] + b"\x00\x13garbage" * 300,
    ),
    Case(
        "truncated-dicom",
        "/inspect",
        "damaged or incomplete",
        "scan.dcm",
        lambda: (EXAMPLES_DIR / "siim-pneumothorax-sample.dcm").read_bytes()[:1500],
    ),
    Case("dicom-without-pixels", "/inspect", "no image", "scan.dcm", lambda: make_dicom(None)),
    Case(
        "unsupported-transfer-syntax",
        "/inspect",
        "jpeg-ls",
        "scan.dcm",
        lambda: encapsulated_dicom(uid.JPEGLSLossless),
    ),
    Case("text-as-png", "/inspect", "contains text", "scan.png", lambda: b"hello\n" * 50),
    Case("pdf-as-jpeg", "/inspect", "pdf document", "scan.jpg", lambda: b"%PDF-1.4\n%\xe2\xe3\n"),
    Case(
        "zip-as-png",
        "/inspect",
        "not an image",
        "scan.png",
        lambda: _zip({"a.txt": b"x"}),
    ),
    Case(
        "html-as-png",
        "/inspect",
        "contains text",
        "scan.png",
        lambda: b"<html><script>alert(1)</script></html>",
    ),
    Case("random-bytes-dicom", "/inspect", "not", "scan.dcm", lambda: bytes(range(256)) * 8),
    Case(
        "1x1-image",
        "/inspect",
        "only 1 x 1 pixels",
        "scan.png",
        lambda: png_bytes(np.zeros((1, 1), np.uint8)),
    ),
    Case(
        "20000x20000-png",
        "/inspect",
        "too large",
        "scan.png",
        lambda: png_header_only(20000, 20000),
    ),
    Case(
        "decompression-bomb",
        "/inspect",
        "too large",
        "bomb.png",
        lambda: png_header_only(200_000, 200_000),
    ),
    Case("20000x20000-dicom", "/inspect", "too large", "scan.dcm", _huge_dicom),
    Case(
        "1250000x32-png",
        "/inspect",
        "16,383 pixels on a side",
        "scan.png",
        lambda: png_header_only(1_250_000, 32),
    ),
    Case(
        "16000x40-strip",
        "/inspect",
        "far longer on one side than a radiograph",
        "scan.png",
        lambda: png_bytes(np.zeros((40, 16_000), np.uint8)),
    ),
    Case(
        "deflated-dicom-bomb-without-group-length",
        "/inspect",
        "expands to more than 512 mb",
        "scan.dcm",
        _deflate_bomb_dicom,
    ),
    Case("16-bit-png", "/inspect", "ok", "scan.png", lambda: png_bytes(RAMP16)),
    Case("float-tiff", "/inspect", "ok", "scan.tif", _float_tiff),
    Case(
        "multi-frame-dicom",
        "/inspect",
        "ok",
        "scan.dcm",
        lambda: make_dicom(FRAMES, NumberOfFrames=3),
    ),
    Case("dicom-named-png", "/inspect", "ok", "scan.png", lambda: make_dicom(RAMP16)),
    Case("png-named-dicom", "/inspect", "ok", "scan.dcm", lambda: PNG),
    Case("png-named-txt", "/inspect", "ok", "scan.txt", lambda: PNG),  # the bytes decide
    Case("dicom-without-extension", "/inspect", "ok", "IM0001", lambda: make_dicom(RAMP16)),
    Case("text-file", "/inspect", "contains text, not an image", "notes.txt", lambda: b"hello\n"),
    # --- prompts (findings and attribution) ---
    Case("huge-prompt", "/findings", "at most 200 characters", args=("pleural " * 20000, "")),
    Case(
        "control-characters",
        "/findings",
        "contains control characters",
        args=("effusion\x00\x1b[31m", ""),
    ),
    Case("too-many-findings", "/findings", "at most 10", args=("\n".join("abcdefghijk"), "")),
    Case("bad-negation-line", "/findings", "finding => negated", args=("", "effusion -> none")),
    Case("unicode-prompts", "/findings", "ok", args=("épanchement pleural 🫁\nانصباب", "")),
    Case("blank-prompt-lines", "/findings", "ok", args=("\n   \n\t\n", "")),
    Case("no-templates", "/findings", "at least one prompt template", args=("", "", [])),
    Case("empty-finding-to-explain", "/attribute", "type or pick a finding", args=("   ",)),
    Case("huge-finding-to-explain", "/attribute", "at most 200 characters", args=("x" * 50000,)),
    # --- tables for the report map and the batch ---
    Case(
        "map-csv-without-report-column",
        "/map_open",
        "say which column",
        "t.csv",
        lambda: b"a,b\n1,2\n",
    ),
    Case("map-empty-csv", "/map_open", "empty", "t.csv", lambda: b""),
    Case(
        "map-binary-csv",
        "/map_open",
        "could not be read as csv",
        "t.csv",
        lambda: bytes(range(256)) * 16,
    ),
    Case(
        "batch-labels-without-file-column",
        "/batch",
        "file",
        "labels.csv",
        lambda: b"Cardiomegaly,Edema\n1,0\n",
    ),
    Case("batch-zip-that-is-not-a-zip", "/batch", "zip", "images.zip", lambda: b"PK\x03\x04broken"),
    Case(
        "batch-zip-without-images",
        "/batch",
        "no png, jpeg or dicom images",
        "images.zip",
        lambda: _zip({"notes.txt": b"hi"}),
    ),
    Case(
        "batch-zip-of-unreadable-entries",
        "/batch",
        "none of the images could be read",
        "images.zip",
        lambda: _unreadable_entries_zip(good=False),
    ),
    Case(
        "batch-labels-over-the-row-limit",
        "/batch",
        "a label file takes at most 20,000",
        "labels.csv",
        lambda: b"file,Edema\n" + b"".join(b"x%d.png,1\n" % k for k in range(20_001)),
    ),
    Case(
        "report-table-over-the-map-cap",
        "/map_open",
        "has more than 20,000 rows; the map takes at most 20,000",
        "reports.csv",
        lambda: b"report\n" + b"".join(b"No effusion, case %d.\n" % k for k in range(250_001)),
    ),
]


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def _file(tmp_path: Path, case: Case) -> str:
    path = tmp_path / case.name
    path.write_bytes(case.data())
    return handle_file(str(path))


def _call(client: Client, case: Case, tmp_path: Path):
    good = handle_file(str(GOOD_PNG))
    if case.endpoint == "/inspect":
        return client.predict(_file(tmp_path, case), api_name="/inspect")
    if case.endpoint == "/findings":
        custom, negations, *rest = case.args
        templates = rest[0] if rest else TEMPLATES
        return client.predict(good, MODEL, "", custom, templates, negations, api_name="/findings")
    if case.endpoint == "/attribute":
        return client.predict(
            good, MODEL, case.args[0], "gradcam", 0.5, False, api_name="/attribute"
        )
    if case.endpoint == "/map_open":
        return client.predict(
            OWN_TABLE, _file(tmp_path, case), "", MODEL, "cluster", api_name="/map_open"
        )
    if case.endpoint == "/batch":
        if case.name.endswith(".zip"):
            images, labels = _file(tmp_path, case), None
        else:
            zpath = tmp_path / "images.zip"
            zpath.write_bytes(_zip({"a.png": PNG}))
            images, labels = handle_file(str(zpath)), _file(tmp_path, case)
        return client.predict(
            UPLOADED, images, labels, 10, MODEL, "", 0.5, False, api_name="/batch"
        )
    raise AssertionError(case.endpoint)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_message_and_the_server_keeps_serving(client, case, tmp_path):
    if case.expect == "ok":
        out = _call(client, case, tmp_path)
        assert out is not None
        if case.endpoint == "/findings":
            table = out[1]["data"] if isinstance(out[1], dict) else out[1]
            typed = [ln for ln in case.args[0].splitlines() if ln.strip()]
            assert len(table) == 14 + len(typed)
    else:
        with pytest.raises(Exception) as info:
            _call(client, case, tmp_path)
        message = str(info.value)
        assert case.expect in message.lower(), message
        assert "Traceback" not in message and "Exception" not in message, message
    # The server answers a normal request right after.
    _, rows = client.predict(handle_file(str(GOOD_PNG)), api_name="/inspect")
    data = rows["data"] if isinstance(rows, dict) else rows
    assert dict((r[0], r[1]) for r in data)["format"] == "PNG"


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


def test_unreadable_zip_entries_are_listed_and_named_in_no_log(client, tmp_path, caplog, capfd):
    """Encrypted, unknown-method and damaged entries are rows of the problems table with a
    plain reason, the good image is scored, and neither the server log nor its output names
    an entry (file names are often patient identifiers)."""
    archive = tmp_path / "images.zip"
    archive.write_bytes(_unreadable_entries_zip(good=True))
    with caplog.at_level(logging.DEBUG):
        out = client.predict(
            UPLOADED, handle_file(str(archive)), None, 10, MODEL, "", 0.5, False, api_name="/batch"
        )
    problems = out[1]["data"] if isinstance(out[1], dict) else out[1]
    reasons = {row[0]: row[1] for row in problems}
    assert reasons["PHI-123456-encrypted.png"].startswith("encrypted")
    assert reasons["PHI-234567-method.png"].startswith("compressed with a method")
    assert reasons["PHI-345678-damaged.png"].startswith("damaged")
    assert "on 1 images" in out[0]
    captured = capfd.readouterr()
    assert "PHI-" not in caplog.text + captured.out + captured.err


# --- hardening: exports safe to open, toasts as text, numbers checked, sizes bounded ----------


def test_no_csv_the_app_writes_holds_a_live_formula(client, tmp_path):
    """A ZIP entry named like a spreadsheet formula lands in the cases CSV inert (``'=...``)."""
    import csv

    evil = '=HYPERLINK("evil.example";"x").png'
    archive = tmp_path / "images.zip"
    archive.write_bytes(_zip({evil: PNG, "+1.png": PNG, "ok.png": PNG}))
    out = client.predict(
        UPLOADED, handle_file(str(archive)), None, 10, MODEL, "", 0.5, False, api_name="/batch"
    )
    cases_csv = Path(out[6])
    rows = list(csv.DictReader(io.StringIO(cases_csv.read_text(encoding="utf-8"))))
    images = {r["image"] for r in rows}
    assert "'" + evil in images and "'+1.png" in images and "ok.png" in images
    text = cases_csv.read_text(encoding="utf-8")
    assert not any(
        cell.startswith(("=", "+", "-", "@"))
        for row in csv.reader(io.StringIO(text))
        for cell in row
        if not _is_number(cell)
    )


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_html_in_a_column_name_is_shown_as_text(client, tmp_path):
    """A column name holding an image tag and a form must not be drawn in the error toast."""
    table = tmp_path / "reports.csv"
    table.write_text(
        '"<img src=https://evil.example/b.gif><form><input placeholder=password></form>",x\na,b\n'
    )
    with pytest.raises(Exception) as info:
        client.predict(
            OWN_TABLE, handle_file(str(table)), "", MODEL, "cluster", api_name="/map_open"
        )
    message = str(info.value)
    assert "say which column" in message
    assert "<img" not in message and "<form" not in message and "&lt;img" in message


def test_a_number_that_is_not_a_number_is_named(app_url):
    """NaN passes Gradio's slider bounds (a raw JSON call can send it); the handler names the
    control instead of failing blank."""
    import json

    import httpx

    api = f"{app_url}gradio_api/call/batch"
    data = ["Phantoms with known labels", None, None, float("nan"), MODEL, "", 0.5, False]
    body = json.dumps({"data": data})  # Python writes NaN, as a hostile client may
    event = httpx.post(api, content=body, headers={"Content-Type": "application/json"}).json()
    stream = httpx.get(f"{api}/{event['event_id']}", timeout=60).text
    assert "event: error" in stream and "Phantoms to render must be a number from 10" in stream


def test_an_upload_over_the_size_limit_is_refused_before_it_is_stored(tmp_path):
    """Gradio refuses a file over ``EXPLORER_MAX_UPLOAD_MB`` (1 MB here) at the door."""
    from explorer.ops.load import AppProcess

    big = tmp_path / "big.png"
    big.write_bytes(PNG + bytes(2 * 1024 * 1024))
    with AppProcess(env={"EXPLORER_MAX_UPLOAD_MB": "1"}) as app:
        client = Client(app.url, verbose=False)
        with pytest.raises(Exception, match="(?i)max|size|large|413"):
            client.predict(handle_file(str(big)), api_name="/inspect")
        _, rows = client.predict(handle_file(str(GOOD_PNG)), api_name="/inspect")  # still serving
        assert rows

"""Hostile and broken inputs sent through the real server with ``gradio_client``.

Every case must come back with a clear message (a sentence naming what was wrong, no
traceback), or, for odd but valid input, with a result; and the server must answer a normal
request right after. The table below is the list the production-readiness note reports.
"""

from __future__ import annotations

import io
import zipfile
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

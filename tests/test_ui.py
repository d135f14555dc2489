"""The app served for real on a free port and driven through gradio_client."""

from __future__ import annotations

import socket

import pytest

gradio = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from explorer.ui import build_demo  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    demo = build_demo()
    demo.queue(default_concurrency_limit=2)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def _meta(rows) -> dict[str, str]:
    data = rows["data"] if isinstance(rows, dict) else rows
    return {r[0]: r[1] for r in data}


def test_inspect_real_dicom(client, samples_dir):
    image, rows = client.predict(
        handle_file(str(samples_dir / "siim-pneumothorax-sample.dcm")), api_name="/inspect"
    )
    meta = _meta(rows)
    assert meta["format"] == "DICOM" and meta["width"] == "1024"
    assert image  # the displayed image came back


def test_bad_file_gets_sentence_and_server_keeps_serving(client, samples_dir, tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(Exception) as info:
        client.predict(handle_file(str(bad)), api_name="/inspect")
    message = str(info.value)
    assert "image" in message.lower() and "Traceback" not in message
    _, rows = client.predict(
        handle_file(str(samples_dir / "00000001_000.png")), api_name="/inspect"
    )
    assert _meta(rows)["format"] == "PNG"


def test_models_endpoint_lists_registry(client):
    table = client.predict(api_name="/models")
    data = table["data"] if isinstance(table, dict) else table
    assert any(row[0].startswith("phantom-negaware") for row in data)

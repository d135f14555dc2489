"""Event handlers: plain functions that call the library and turn its errors into ``gr.Error``."""

from __future__ import annotations

import logging

import gradio as gr
import numpy as np

from explorer.errors import ExplorerError

log = logging.getLogger(__name__)


def user_error(err: ExplorerError) -> gr.Error:
    """The library's sentence, shown to the person as a Gradio error toast."""
    return gr.Error(str(err), print_exception=False)


def inspect_upload(path: str | None) -> tuple[np.ndarray, list[list[str]]]:
    """An uploaded file -> the normalised grayscale image and its safe metadata rows."""
    from explorer.imaging import describe, load_image, to_uint8

    if not path:
        raise gr.Error(
            "Please upload a chest X-ray (PNG, JPEG or DICOM) first.", print_exception=False
        )
    try:
        img = load_image(path)
    except ExplorerError as err:
        raise user_error(err) from None
    rows = [[key, _cell(value)] for key, value in describe(img).items()]
    return to_uint8(img.pixels), rows


def model_rows() -> list[list[str]]:
    """One row per registered model: name, backend, whether it loads here, why, description."""
    from explorer.models import default_registry

    reg = default_registry()
    rows = []
    for name in reg.names():
        st = reg.status(name)
        label = f"{name} (default)" if name == reg.default else name
        rows.append([label, st.backend, "yes" if st.available else "no", st.reason, st.description])
    return rows


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)

"""Helpers every tab shares: errors for the person, the upload, models, CSV downloads, tables.

Handlers turn the library's :class:`~explorer.errors.ExplorerError` into a ``gr.Error`` toast
with :func:`user_error`; they read the shared upload with :func:`load_upload` /
:func:`upload_pixels` and a model with :func:`load_model` (the registry caches loaded models).
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import numpy as np

from explorer.errors import ExplorerError
from explorer.progress import Cancelled, Progress, in_words
from explorer.ui.serving import ENDED, endpoint, scratch_file

log = logging.getLogger(__name__)

#: Longest finding or prompt a person may type (characters).
MAX_PROMPT_CHARS = 200


def user_error(err: ExplorerError | str) -> gr.Error:
    """A sentence (the library's, or the app's own) shown to the person as an error toast.

    As plain text: Gradio renders a toast's message as HTML, and a column name, file name or
    typed finding from a stranger must not draw an image or a form there. Only ``<`` (what
    opens a tag) is escaped, so an API caller reads ``=>`` and ``&`` as they were written.
    """
    return gr.Error(str(err).replace("<", "&lt;"), print_exception=False)


#: Below this share done (or this many seconds in), no time-left figure is guessed.
ETA_MIN_FRACTION, ETA_MIN_SECONDS = 0.05, 3.0


def reporter(
    progress: gr.Progress | None,
    request: gr.Request | None = None,
    prefix: str = "",
) -> Progress:
    """The library's progress callback for a handler.

    Drives the handler's ``gr.Progress`` with the stage's name and, once the work has run a
    while, the time left at its pace so far; and stops the work (:class:`Cancelled`) once the
    person's page has gone (:data:`~explorer.ui.serving.ENDED`).
    """
    import time

    session = getattr(request, "session_hash", None)
    t0 = time.perf_counter()

    def report(fraction: float, message: str) -> None:
        if ENDED.ended(session):
            raise Cancelled("The page that asked for this work was closed; the work stopped.")
        if progress is None:
            return
        elapsed = time.perf_counter() - t0
        desc = f"{prefix}{message}"
        if fraction >= ETA_MIN_FRACTION and elapsed >= ETA_MIN_SECONDS and fraction < 1:
            desc += f" · about {in_words(elapsed * (1 - fraction) / fraction)} left"
        progress(min(max(fraction, 0.0), 1.0), desc=desc)

    return report


def end_session(request: gr.Request) -> None:
    """Gradio's ``unload``: the page was closed or reloaded; its long work stops."""
    ENDED.end(getattr(request, "session_hash", None))


def number_in(value, label: str, low: float, high: float, default: float) -> float:
    """A slider's or an API caller's number, checked: ``default`` when missing, else a finite
    number in ``[low, high]`` or an error toast naming the control (Gradio lets NaN through)."""
    import math

    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or not low <= number <= high:
        raise user_error(f"{label} must be a number from {low:g} to {high:g}, got {value!r}.")
    return number


def model_choices(preferred: str | None) -> tuple[list[str], str | None, str | None]:
    """Registered names, the model to open with, and a notice if ``preferred`` cannot load."""
    from explorer.models import default_registry

    reg = default_registry()
    default, notice = reg.preferred(preferred)
    return list(reg.names()), default, notice


#: Captions of the shipped real examples (the phantoms' come from ``phantoms.json``).
EXAMPLE_CAPTIONS = "examples.json"


def example_gallery() -> list[tuple[str, str]]:
    """(path, caption) of every shipped example: the real films first, then the phantoms."""
    import json

    from explorer.paths import examples_dir
    from explorer.phantom.examples import shipped_phantoms

    folder = examples_dir()
    captions_file = folder / EXAMPLE_CAPTIONS
    real = json.loads(captions_file.read_text(encoding="utf-8")) if captions_file.is_file() else {}
    out = [(str(folder / name), caption) for name, caption in real.items()]
    for name, entry in shipped_phantoms(folder).items():
        signs = ", ".join(
            " ".join(x for x in (f["severity"], f["laterality"], f["name"]) if x)
            for f in entry["findings"]
        )
        caption = f"Phantom: {signs} (with its mask)" if signs else "Phantom: normal"
        out.append((str(folder / name), caption))
    return [(path, caption) for path, caption in out if Path(path).is_file()]


#: The "Compare with" menu's empty choice, in words rather than an empty row.
NO_COMPARISON = ("none", "")


def compare_choices(names: list[str], primary: str | None) -> list[tuple[str, str]]:
    """The "Compare with" menu: no comparison, or another model that can load here."""
    from explorer.models import default_registry

    reg = default_registry()
    others = [n for n in names if n != primary and reg.status(n).available]
    return [NO_COMPARISON, *((n, n) for n in others)]


def compare_menu(names: list[str]):
    """An event handler: the "Compare with" menu for a newly chosen first model."""

    def update(primary: str | None, current: str | None) -> gr.Dropdown:
        choices = compare_choices(names, primary)
        keep = current if current in {value for _, value in choices} else ""
        return gr.Dropdown(choices=choices, value=keep)

    return update


def load_model(name: str | None):
    """The named model (or the default, with a notice when it had to fall back), loaded once.

    Returns:
        ``(model, notice)`` as :meth:`explorer.models.ModelRegistry.load_or_default`.

    Raises:
        gr.Error: With the library's sentence when no model can load.
    """
    from explorer.models import default_registry

    try:
        return default_registry().load_or_default(name or None)
    except ExplorerError as err:
        raise user_error(err) from None


def load_upload(path: str | None):
    """The upload decoded in memory, or a ``gr.Error`` saying what is wrong with it."""
    from explorer.imaging import load_radiograph

    if not path:
        raise user_error("Please upload a chest X-ray (PNG, JPEG or DICOM) first.")
    if not Path(path).exists():
        raise user_error(
            "This upload has been deleted from the server (uploads are kept only for a few "
            "minutes); please upload the image again."
        )
    try:
        return load_radiograph(path)
    except ExplorerError as err:
        raise user_error(err) from None


def upload_pixels(path: str | None) -> np.ndarray:
    """The upload's normalised grayscale pixels (see :func:`load_upload`)."""
    return load_upload(path).pixels


def csv_download(frame, stem: str) -> str:
    """A CSV download of a DataFrame in the scratch folder (purged with the upload cache),
    written by the project's one CSV writer (formula-like cells made inert)."""
    from explorer.data.table import csv_text

    return scratch_file(f"{stem}.csv", csv_text(frame))


def table_rows(rows) -> list[list]:
    """A Dataframe input (pandas frame or list of rows) as a list of rows."""
    return rows.values.tolist() if hasattr(rows, "values") else list(rows or [])


@endpoint("inspect")
def inspect_upload(path: str | None) -> tuple[np.ndarray | None, list[list[str]]]:
    """An uploaded file -> the normalised grayscale image and its safe metadata rows.

    A cleared upload (``None``) clears both, without an error: the person removed the file.
    """
    from explorer.imaging import describe, to_uint8

    if not path:
        return None, []
    img = load_upload(path)
    rows = [[key, _cell(value)] for key, value in describe(img).items()]
    return to_uint8(img.pixels), rows


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


def clear_error_marks(trigger, outputs: list) -> None:
    """When ``trigger`` fires (a new upload, say), the "Error" marks a failed run left on
    ``outputs`` go: the cause may be fixed, and the toast already said what it was."""
    trigger(
        lambda: [gr.skip()] * len(outputs),
        outputs=outputs,
        show_progress="hidden",
        queue=False,
        api_name=False,
    )

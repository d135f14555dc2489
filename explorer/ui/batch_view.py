"""Batch tab: a labelled set of images, where the model is wrong, drill-down and annotations.

Library work is in :mod:`explorer.eval.batch`; this module lays out the tab and turns its results
into tables; the calibration figure comes from :func:`explorer.plots.calibration_figure`.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from explorer.errors import ExplorerError
from explorer.eval.metrics import MIN_AUC_CASES
from explorer.ui.common import (
    clear_error_marks,
    compare_choices,
    compare_menu,
    csv_download,
    load_model,
    number_in,
    reporter,
    table_rows,
    user_error,
)
from explorer.ui.serving import endpoint, scratch_file

SOURCES = (
    "Phantoms with known labels",
    "My images (ZIP) + labels (CSV)",
    "Real NIH test films",
)
MARKS = ("correct label", "model wrong", "label wrong", "unsure")
BATCH_HELP = (
    "Bring a set of images with labels, or render phantoms whose findings are known. For each "
    "image and finding the model compares *there is X* with *there is no X*; a **negation "
    "error** is a positive case where it prefers the negated sentence, or a negative case where "
    "it prefers the affirmed one. Errors are listed most confident first. Click a row to open "
    "that image in the Findings and Attribution tabs with its finding selected, and mark the "
    "case; the marks export as CSV and are kept in this browser (not on the server) until you "
    "press *Forget my marks*. A finding's AUC is shown only with at least "
    f"{MIN_AUC_CASES} positive and {MIN_AUC_CASES} negative cases (fewer would look precise "
    "and say little)."
)
ANNOTATION_COLUMNS = ["image", "finding", "label", "P(affirmed)", "mark", "note"]
#: Where the browser keeps the marks (its local storage), so that a reload keeps them.
MARKS_STORAGE_KEY = "cxr-negation-explorer-marks"


@endpoint("batch", gpu_seconds=300, fair=True)
def run_batch(
    source: str,
    zip_path: str | None,
    labels_path: str | None,
    phantoms: float,
    model_name: str | None,
    compare_name: str | None,
    threshold: float,
    errors_only: bool,
    request: gr.Request = None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio injects it
):
    """Read, score and summarise a batch (and optionally compare a second model).

    Closing the page stops the work at its next image."""
    from explorer.eval.batch import evaluate, flips, read_batch
    from explorer.plots import calibration_figure

    say = reporter(progress, request)
    try:
        if source == SOURCES[0]:
            count = int(number_in(phantoms, "Phantoms to render", 10, 1000, 200))
            batch = read_batch(f"phantom:{count}", progress=say)
        elif source == SOURCES[2]:
            batch = read_batch("nih-test", progress=say)
        else:
            if not zip_path:
                raise user_error("Upload a ZIP of images first.")
            batch = read_batch(Path(zip_path), Path(labels_path) if labels_path else None, say)
        model, notice = load_model(model_name)
        ev = evaluate(model, batch, progress=reporter(progress, request, prefix=f"{model.name}: "))
        other = None
        if compare_name and compare_name != model.name:  # no comparison with itself
            second, _ = load_model(compare_name)
            other = evaluate(
                second, batch, progress=reporter(progress, request, prefix=f"{second.name}: ")
            )
    except ExplorerError as err:
        raise user_error(err) from None
    problems = [[w, r] for w, r in batch.problems]
    cases = ev.to_frame(errors_only=bool(errors_only))
    export = ev.to_frame().assign(**ev.provenance)
    changed = flips(ev, other) if other is not None else None
    status = (
        f"**{ev.model}** on {len(batch)} images; templates {', '.join(ev.templates)}. "
        f"{sum(c.negation_error for c in ev.cases):,} negation errors among "
        f"{sum(c.labelled for c in ev.cases):,} labelled cases"
        + (f"; {batch.problem_count:,} files or rows not used (listed below)" if problems else "")
        + "."
        + (f"  \n⚠️ {notice}" if notice else "")
        + (f"  \n{len(changed)} labelled cases flip with **{other.model}**." if other else "")
    )
    state = {"batch": batch, "evaluation": ev}
    return (
        status,
        problems,
        ev.metrics(number_in(threshold, "Threshold for accuracy", 0.05, 0.95, 0.5)),
        calibration_figure(ev.calibration(), ev.model),
        cases,
        changed,
        csv_download(export, f"cases-{ev.model}"),
        state,
    )


def marks_store() -> gr.BrowserState:
    """The marks' place in the person's browser (local storage); make it outside any tab."""
    return gr.BrowserState([], storage_key=MARKS_STORAGE_KEY)


def source_controls(source: str) -> tuple[gr.Slider, gr.Row]:
    """Show what the chosen source needs: the phantom count, or the ZIP and CSV drop zones."""
    return gr.Slider(visible=source == SOURCES[0]), gr.Row(visible=source == SOURCES[1])


def saved_mark(rows, image: str, finding: str) -> tuple[str | None, str]:
    """The mark and note already saved for a case in the marks table (else none and "")."""
    for r in table_rows(rows):
        if r and len(r) >= 6 and (str(r[0]), str(r[1])) == (image, finding):
            return (str(r[4]) or None), str(r[5] or "")
    return None, ""


def open_case(state: dict | None, rows, evt: gr.SelectData):
    """A clicked case -> the image into the shared upload, its finding into Attribution.

    The mark form shows the case's own saved mark and note, or an empty form: nothing typed
    for the previous case carries over to this one.
    """
    if not state:
        raise user_error("Run a batch first.")
    row = evt.row_value or []
    if len(row) < 2:
        raise user_error("Click a row of the cases table.")
    image, finding = str(row[0]), str(row[1])
    item = next((im for im in state["batch"].images if im.name == image), None)
    if item is None:
        raise user_error(f"{image} is not in this batch.")
    # The batch keeps shrunk pixels, not the upload: the case opens as a PNG of what was scored.
    path = scratch_file(f"{Path(item.name).stem}.png", item.png_bytes())
    label = str(row[2]) if len(row) > 2 else ""
    prob = str(row[3]) if len(row) > 3 else ""
    case = {"image": image, "finding": finding, "label": label, "P(affirmed)": prob}
    info = f"**{image}**: {finding} (label {label or 'blank'}, P(affirmed) {prob})"
    mark, note = saved_mark(rows, image, finding)
    return path, finding, case, info, mark, note


def mark_case(case: dict | None, mark: str | None, note: str | None, rows):
    """Add (or replace) the mark of the open case in the annotations table."""
    if not case:
        raise user_error("Click a case in the table first.")
    if mark not in MARKS:
        raise user_error(f"Choose a mark: {', '.join(MARKS)}.")
    data = [r for r in table_rows(rows) if r and (r[0], r[1]) != (case["image"], case["finding"])]
    data.append(
        [case["image"], case["finding"], case["label"], case["P(affirmed)"], mark, note or ""]
    )
    return data


def export_marks(rows, state: dict | None):
    """The annotations as CSV, with the model and prompt templates they were made with."""
    import pandas as pd

    data = [r for r in table_rows(rows) if r and any(str(v) for v in r)]
    if not data:
        raise user_error("No marked cases to export yet.")
    frame = pd.DataFrame(data, columns=ANNOTATION_COLUMNS)
    if state:
        frame = frame.assign(**state["evaluation"].provenance)
    return csv_download(frame, "annotations")


def build_tab(
    upload,
    att_finding,
    tabs,
    findings_tab_id: str,
    model_names,
    default_model,
    score_after=None,
    demo=None,
    kept_marks=None,
    state_ttl_s: float | None = None,
):
    """The Batch tab; a clicked case fills ``upload`` and ``att_finding`` and opens Findings,
    scored at once when ``score_after`` (the Findings tab's chaining function) is given.

    The marks are kept in the person's own browser (local storage, never on the server), so
    they survive a reload; "Forget my marks" clears them. ``kept_marks`` is the
    :func:`marks_store` (made outside the tabs, so the browser has it from the start) and
    ``demo`` restores the marks from it on page load; without them the marks last the session.
    """
    gr.Markdown(BATCH_HELP)
    with gr.Row():
        source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Batch")
        phantoms = gr.Slider(10, 1000, value=200, step=10, label="Phantoms to render")
    with gr.Row(visible=False) as own_files:  # only for "your own ZIP"
        zip_file = gr.File(label="Images (ZIP of PNG / JPEG / DICOM)", file_types=[".zip"])
        labels_file = gr.File(
            label="Labels (CSV: file name + CheXpert columns, 1 / 0 / -1 / blank)",
            file_types=[".csv"],
        )
    source.change(source_controls, source, [phantoms, own_files], api_name=False, queue=False)
    with gr.Row():
        model = gr.Dropdown(model_names, value=default_model, label="Model")
        # Another model that loads here (an API caller may name any registered model).
        compare = gr.Dropdown(
            compare_choices(model_names, default_model),
            value="",
            allow_custom_value=True,
            label="Compare with (optional)",
        )
        threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Threshold for accuracy")
        errors_only = gr.Checkbox(value=True, label="Show negation errors only")
    model.change(compare_menu(model_names), [model, compare], compare, api_name=False)
    run = gr.Button("Evaluate batch", variant="primary")
    status = gr.Markdown()
    # The evaluated batch (its shrunk pixels) lives as long as an upload, not for the session.
    state = gr.State(None, time_to_live=state_ttl_s)
    with gr.Row():
        metrics = gr.Dataframe(label="Per finding", interactive=False)
        calib = gr.Plot(label="Calibration")
    cases = gr.Dataframe(label="Cases (click a row to open it)", interactive=False)
    with gr.Row():
        case_info = gr.Markdown()
        case = gr.State(None)
    with gr.Row():
        mark = gr.Radio(list(MARKS), label="Mark this case")
        note = gr.Textbox(label="Note", lines=1)
        save = gr.Button("Save mark")
    marks = gr.Dataframe(
        headers=ANNOTATION_COLUMNS, label="Marked cases", interactive=False, elem_id="marks"
    )
    with gr.Row():
        export = gr.Button("Export marks (CSV)")
        forget = gr.Button("Forget my marks")
        marks_csv = gr.File(label="Marks CSV", elem_id="marks-csv")
        cases_csv = gr.File(label="All cases (CSV)")
    flips_table = gr.Dataframe(
        headers=["image", "finding", "label", "change"],
        label="Cases that flip between the two models (choose a second model above)",
        interactive=False,
    )
    problems = gr.Dataframe(
        headers=["file or row", "reason"], label="Not used, and why", interactive=False
    )
    outputs = [status, problems, metrics, calib, cases, flips_table, cases_csv, state]
    for changed in (source.change, zip_file.change, labels_file.change):
        clear_error_marks(changed, outputs)
    run.click(
        run_batch,
        inputs=[source, zip_file, labels_file, phantoms, model, compare, threshold, errors_only],
        outputs=outputs,
        show_progress_on=metrics,  # one progress bar, not one per output
        api_name="batch",
        concurrency_limit=1,
    )
    opened = cases.select(
        open_case,
        inputs=[state, marks],
        outputs=[upload, att_finding, case, case_info, mark, note],
        api_name=False,
    ).then(lambda: gr.Tabs(selected=findings_tab_id), outputs=tabs, api_name=False)
    if score_after is not None:
        score_after(opened)
    saved = save.click(mark_case, inputs=[case, mark, note, marks], outputs=marks, api_name=False)
    cleared = forget.click(lambda: [], outputs=marks, api_name=False)
    if kept_marks is not None and demo is not None:
        for event in (saved, cleared):
            event.then(table_rows, inputs=marks, outputs=kept_marks, api_name=False)
        demo.load(table_rows, inputs=kept_marks, outputs=marks, api_name=False)
    export.click(export_marks, inputs=[marks, state], outputs=marks_csv, api_name=False)

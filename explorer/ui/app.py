"""Assemble the Gradio Blocks: title, disclaimer, the shared upload, one tab per view module.

Each tab's layout and handlers live in its view module (``findings_view``, ``attribution_view``,
``report_map_view``, ``batch_view``, ``lesson_view``, ``models_view``); helpers they share are in
:mod:`explorer.ui.common`; serving (queue limits, ZeroGPU, health) in :mod:`explorer.ui.serving`.
"""

from __future__ import annotations

import gradio as gr

from explorer.ui import (
    attribution_view,
    batch_view,
    findings_view,
    lesson_view,
    models_view,
    report_map_view,
)
from explorer.ui.common import end_session, example_gallery, inspect_upload, model_choices
from explorer.ui.serving import ServeSettings

TITLE = "CXR Negation Explorer"
DISCLAIMER = (
    "Research and teaching tool. Not a medical device and not for diagnosis. "
    "Uploads are decoded in memory, never logged, and deleted from the server within minutes; "
    "only an allow-list of DICOM fields is shown. Burned-in text in the pixels is not removed."
)
#: The Findings tab's id (the Batch tab switches to it when a case is clicked).
FINDINGS_TAB = "findings"


def build_demo(settings: ServeSettings | None = None) -> gr.Blocks:
    """Build the app. Nothing heavy happens here: models load on first use.

    Args:
        settings: Serving settings (default: from the environment): the model to open with,
            and how long Gradio keeps uploads before deleting them.
    """
    settings = settings or ServeSettings.from_env()
    names, default, start_notice = model_choices(settings.default_model)
    with gr.Blocks(
        title=TITLE, analytics_enabled=False, delete_cache=settings.delete_cache
    ) as demo:
        gr.Markdown(
            f"# {TITLE}\nHow do medical vision-language models weigh *“there is X”* against *“no X”*?"
        )
        gr.Markdown(f"*{DISCLAIMER}*")
        if start_notice:
            gr.Markdown(f"⚠️ {start_notice}", elem_id="start-notice")
        with gr.Row():
            with gr.Column(scale=1):
                # No extension filter: PACS exports name DICOM files "IM0001"; the decoder reads
                # the bytes and says plainly when a file is no image.
                upload = gr.File(
                    label="Chest X-ray (PNG, JPEG or DICOM)",
                    type="filepath",
                    elem_id="cxr-upload",
                )
                examples = example_gallery()
                gr.Examples(
                    examples=[[path] for path, _ in examples],
                    example_labels=[caption for _, caption in examples],
                    inputs=upload,
                    label="Examples: click one (real films, and phantoms whose findings are known)",
                    examples_per_page=12,
                )
            with gr.Column(scale=1):
                shown = gr.Image(
                    label="As the models see it", type="numpy", image_mode="L", interactive=False
                )
            with (
                gr.Column(scale=1),
                gr.Accordion("Safe metadata (no patient identifiers)", open=False),
            ):
                meta = gr.Dataframe(headers=["field", "value"], interactive=False)
        upload.change(inspect_upload, inputs=upload, outputs=[shown, meta], api_name="inspect")

        kept_marks = batch_view.marks_store()  # outside the tabs: there from page load on
        with gr.Tabs() as tabs:
            with gr.Tab("Findings", id=FINDINGS_TAB):
                score_after = findings_view.build_tab(upload, names, default)
            with gr.Tab("Attribution"):
                att_finding = attribution_view.build_tab(upload, names, default)
            with gr.Tab("Report map") as map_tab:
                report_map_view.build_tab(
                    upload, names, default, map_tab, state_ttl_s=settings.upload_ttl_s
                )
            with gr.Tab("Batch", id="batch"):
                batch_view.build_tab(
                    upload,
                    att_finding,
                    tabs,
                    FINDINGS_TAB,
                    names,
                    default,
                    score_after,
                    demo,
                    kept_marks,
                    state_ttl_s=settings.upload_ttl_s,
                )
            with gr.Tab("Lesson", id="lesson"):
                lesson_view.build_tab(names, default)
            with gr.Tab("Models"):
                models_view.build_tab(demo)
        demo.unload(end_session)  # a closed or reloaded page: its long work stops
    return demo

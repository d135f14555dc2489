"""Assemble the Gradio Blocks. Layout only: every event calls a function in ``handlers``."""

from __future__ import annotations

import gradio as gr

from explorer.attribution import BASELINES, DEFAULT_BASELINES
from explorer.paths import examples_dir
from explorer.ui import batch_view, handlers, lesson_view, report_map
from explorer.ui.serving import CONCURRENCY, ServeSettings, health

TITLE = "CXR Negation Explorer"
DISCLAIMER = (
    "Research and teaching tool. Not a medical device and not for diagnosis. "
    "Uploads are decoded in memory, never logged, and deleted from the server within minutes; "
    "only an allow-list of DICOM fields is shown. Burned-in text in the pixels is not removed."
)
EXAMPLES_DIR = examples_dir()
UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"]
ATTRIBUTION_HELP = (
    "Which pixels and which words drive the similarity? Red marks evidence *for* the prompt, "
    "blue evidence *against* it (integrated gradients and occlusion are signed; Grad-CAM shows "
    "positive evidence only). The third map is the affirmed map minus the negated one: where "
    "the image speaks for *there is X* rather than *there is no X*. For the phantom examples the "
    "green outline is the true lesion. How far to trust them: on held-out phantoms the strongest "
    "point of an occlusion or IG map falls on the true lesion for only about 4 in 10 of the "
    "findings the model gets right (large signs such as the heart almost always, nodules and "
    "rib fractures rarely; see the README's pointing game). Read a map as what moved this "
    "model's score, not as an outline of the lesion. The *baseline* is the image IG starts "
    "from and the paint occlusion hides regions with: black, the image's mean grey, or a blur "
    "of the image (keeps the anatomy, wipes out small signs). Maps change with it; comparing "
    "them is a lesson in itself."
)
FINDINGS_HELP = (
    "For each finding the image is compared with an affirmed prompt (*there is X*) and its "
    "negation (*there is no X*). The bar shows the softmax over that pair: right of the middle "
    "the model prefers the affirmed sentence, left of it the negated one. Grey rows marked ⚠ "
    "are **negation-blind**: the model barely separates the two sentences there (the pair's "
    "probability is close to 0.5, or the table's *text cosine*, how alike the model finds the "
    "two sentences themselves, is close to 1)."
)


SCORE_COLUMNS = [
    "finding",
    "P(affirmed)",
    "sim affirmed",
    "sim negated",
    "margin",
    "negation-blind",
]


def _model_choices(preferred: str | None) -> tuple[list[str], str | None, str | None]:
    """Registered names, the model to open with, and a notice if ``preferred`` cannot load."""
    from explorer.models import default_registry

    reg = default_registry()
    default, notice = reg.preferred(preferred)
    return list(reg.names()), default, notice


def _chexpert() -> tuple[str, ...]:
    from explorer.vocab.labels import CHEXPERT_FINDINGS

    return CHEXPERT_FINDINGS


CHEXPERT_CHOICES = _chexpert()


def _template_choices() -> list[str]:
    from explorer.vocab.prompts import prompt_templates

    return [t.id for t in prompt_templates()]


def build_demo(settings: ServeSettings | None = None) -> gr.Blocks:
    """Build the app. Nothing heavy happens here: models load on first use.

    Args:
        settings: Serving settings (default: from the environment): the model to open with,
            and how long Gradio keeps uploads before deleting them.
    """
    settings = settings or ServeSettings.from_env()
    names, default, start_notice = _model_choices(settings.default_model)
    template_ids = _template_choices()
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
                upload = gr.File(
                    label="Chest X-ray (PNG, JPEG or DICOM)",
                    file_types=UPLOAD_TYPES,
                    type="filepath",
                    elem_id="cxr-upload",
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
        upload.change(
            handlers.inspect_upload, inputs=upload, outputs=[shown, meta], api_name="inspect"
        )

        with gr.Tabs() as tabs:
            with gr.Tab("Findings", id="findings"):
                gr.Markdown(FINDINGS_HELP)
                with gr.Row():
                    model = gr.Dropdown(names, value=default, label="Model")
                    compare = gr.Dropdown([""] + names, value="", label="Compare with (optional)")
                with gr.Accordion("Prompts", open=False):
                    templates = gr.CheckboxGroup(
                        template_ids, value=template_ids, label="Templates averaged"
                    )
                    custom = gr.Textbox(
                        label="Extra findings, one per line (negated automatically)", lines=2
                    )
                    negations = gr.Textbox(
                        label="Your own negations, one per line: finding => negated sentence",
                        lines=2,
                    )
                run = gr.Button("Score findings", variant="primary")
                notice = gr.Markdown()
                with gr.Row():
                    with gr.Column():
                        card = gr.Markdown()
                        plot = gr.Plot(label="Affirmed vs negated")
                        table = gr.Dataframe(
                            headers=SCORE_COLUMNS, label="Scores", interactive=False
                        )
                        csv = gr.File(label="Download CSV", elem_id="findings-csv")
                    with gr.Column(visible=False) as second:
                        card2 = gr.Markdown()
                        plot2 = gr.Plot(label="Second model")
                        table2 = gr.Dataframe(
                            headers=SCORE_COLUMNS, label="Scores (second model)", interactive=False
                        )
                        csv2 = gr.File(label="Download CSV (second model)")
                compare.change(
                    lambda name: gr.Column(visible=bool(name)), compare, second, api_name=False
                )
                run.click(
                    handlers.score_image,
                    inputs=[upload, model, compare, custom, templates, negations],
                    outputs=[plot, table, csv, card, plot2, table2, csv2, card2, notice],
                    api_name="findings",
                    concurrency_limit=CONCURRENCY["findings"],
                )
            with gr.Tab("Attribution"):
                gr.Markdown(ATTRIBUTION_HELP)
                with gr.Row():
                    att_model = gr.Dropdown(names, value=default, label="Model")
                    att_finding = gr.Dropdown(
                        list(CHEXPERT_CHOICES),
                        value="Pleural Effusion",
                        allow_custom_value=True,
                        label="Finding",
                    )
                    method = gr.Radio(
                        ["ig", "gradcam", "occlusion"], value="occlusion", label="Method"
                    )
                with gr.Row():
                    opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Overlay opacity")
                    show_mask = gr.Checkbox(
                        value=True, label="Show ground-truth lesion mask (phantom examples)"
                    )
                    baseline = gr.Radio(
                        list(BASELINES),
                        value=DEFAULT_BASELINES["occlusion"],
                        label="Baseline (IG starts from it, occlusion paints with it)",
                    )
                    explain_btn = gr.Button("Explain", variant="primary")
                att_info = gr.Markdown()
                with gr.Row():
                    map_a = gr.Image(label="Affirmed prompt", type="numpy", interactive=False)
                    map_n = gr.Image(label="Negated prompt", type="numpy", interactive=False)
                    map_d = gr.Image(
                        label="Difference (affirmed − negated)", type="numpy", interactive=False
                    )
                with gr.Row():
                    tok_a = gr.HighlightedText(label="Words: affirmed prompt", color_map=None)
                    tok_n = gr.HighlightedText(label="Words: negated prompt", color_map=None)
                method.change(
                    handlers.baseline_control, method, baseline, api_name=False, queue=False
                )
                explain_btn.click(
                    handlers.explain,
                    inputs=[upload, att_model, att_finding, method, opacity, show_mask, baseline],
                    outputs=[map_a, map_n, map_d, tok_a, tok_n, att_info],
                    api_name="attribute",
                    concurrency_limit=CONCURRENCY["attribute"],
                )
            with gr.Tab("Report map"):
                report_map.build_tab(upload, names, default)
            with gr.Tab("Batch", id="batch"):
                batch_view.build_tab(upload, att_finding, tabs, "findings", names, default)
            with gr.Tab("Lesson", id="lesson"):
                lesson_view.build_tab(names, default)
            with gr.Tab("Models"):
                gr.Markdown(
                    "Registered models and whether each can load on this machine (hub models need a connection)."
                )
                models_table = gr.Dataframe(
                    headers=["model", "backend", "loads here", "why", "description"],
                    label="Model registry",
                    interactive=False,
                )
                refresh = gr.Button("Refresh")
                refresh.click(handlers.model_rows, outputs=models_table, api_name="models")
                demo.load(handlers.model_rows, outputs=models_table, api_name=False)
                with gr.Accordion("Server health", open=False):
                    health_json = gr.JSON(label="Memory, loaded models, requests per endpoint")
                    gr.Button("Check").click(health, outputs=health_json, api_name="health")
    return demo

"""Assemble the Gradio Blocks. Layout only: every event calls a function in ``handlers``."""

from __future__ import annotations

import gradio as gr

from explorer.ui import handlers

TITLE = "CXR Negation Explorer"
DISCLAIMER = (
    "Research and teaching tool. Not a medical device and not for diagnosis. "
    "Uploads are decoded in memory and not stored; burned-in text in the pixels is not removed."
)
UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"]


def build_demo() -> gr.Blocks:
    """Build the app. Nothing heavy happens here: models load on first use."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {TITLE}\nHow do medical vision-language models weigh *“there is X”* against *“no X”*?"
        )
        gr.Markdown(f"*{DISCLAIMER}*")
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(
                        label="Chest X-ray (PNG, JPEG or DICOM)",
                        file_types=UPLOAD_TYPES,
                        type="filepath",
                    )
                    gr.Markdown(
                        "The image is converted to grayscale the way the models will see it: DICOM "
                        "rescale then window (VOI LUT), MONOCHROME1 inverted so bone is white."
                    )
                with gr.Column(scale=1):
                    shown = gr.Image(
                        label="As the models see it",
                        type="numpy",
                        image_mode="L",
                        interactive=False,
                    )
                with gr.Column(scale=1):
                    meta = gr.Dataframe(
                        headers=["field", "value"],
                        label="Safe metadata (no patient identifiers)",
                        interactive=False,
                    )
            upload.change(
                handlers.inspect_upload, inputs=upload, outputs=[shown, meta], api_name="inspect"
            )
        with gr.Tab("Models"):
            gr.Markdown(
                "Registered models and whether each can load on this machine (hub models need a connection)."
            )
            table = gr.Dataframe(
                headers=["model", "backend", "loads here", "why", "description"],
                label="Model registry",
                interactive=False,
            )
            refresh = gr.Button("Refresh")
            refresh.click(handlers.model_rows, outputs=table, api_name="models")
            demo.load(handlers.model_rows, outputs=table, api_name=False)
    return demo

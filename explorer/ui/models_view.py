"""Models tab: the model registry (what loads here and why) and the server's health report."""

from __future__ import annotations

import gradio as gr

from explorer.ui.serving import health

MODELS_HELP = (
    "Registered models and whether each can load on this machine (hub models need a connection)."
)
MODEL_COLUMNS = ["model", "backend", "loads here", "why", "description"]


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


def build_tab(demo: gr.Blocks) -> None:
    """The Models tab (called inside ``gr.Tab``); the table also fills when ``demo`` loads."""
    gr.Markdown(MODELS_HELP)
    table = gr.Dataframe(headers=MODEL_COLUMNS, label="Model registry", interactive=False)
    refresh = gr.Button("Refresh")
    refresh.click(model_rows, outputs=table, api_name="models")
    demo.load(model_rows, outputs=table, api_name=False)
    with gr.Accordion("Server health", open=False):
        health_json = gr.JSON(label="Memory, loaded models, requests per endpoint")
        gr.Button("Check").click(health, outputs=health_json, api_name="health")

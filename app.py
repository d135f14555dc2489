"""Entry point: ``python app.py`` starts CXR Negation Explorer (also the Hugging Face Space's app file)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from explorer.ui import build_demo  # noqa: E402

demo = build_demo()

# On a Hugging Face Space (SPACE_ID is set there) build the default report map at start-up.
if os.environ.get("EXPLORER_PREBUILD_MAP", "1" if os.environ.get("SPACE_ID") else "0") == "1":
    from explorer.ui.report_map import prebuild_default

    prebuild_default()

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )

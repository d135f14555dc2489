"""Entry point: ``python app.py`` starts CXR Negation Explorer (also the Hugging Face Space's app file).

Settings come from environment variables; see ``explorer/ui/serving.py``.
"""

import logging
import os

from explorer.ui.serving import ServeSettings, launch, prepare_environment, warm_up

prepare_environment()  # before Gradio is imported: private temp folder, analytics off
logging.basicConfig(
    level=os.environ.get("EXPLORER_LOG_LEVEL", "WARNING").upper(),
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

from explorer.ui import build_demo  # noqa: E402

settings = ServeSettings.from_env()
demo = build_demo(settings)

# On a Hugging Face Space (SPACE_ID is set there) build the default report map at start-up.
if os.environ.get("EXPLORER_PREBUILD_MAP", "1" if os.environ.get("SPACE_ID") else "0") == "1":
    from explorer.ui.report_map_view import prebuild_default

    prebuild_default()

if __name__ == "__main__":
    warm_up(settings)
    launch(demo, settings)

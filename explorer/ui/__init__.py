"""Gradio user interface: the only package that imports gradio.

``app`` assembles the Blocks; each tab is one view module owning its layout and handlers
(``findings_view``, ``attribution_view``, ``report_map_view``, ``batch_view``, ``lesson_view``,
``models_view``); ``common`` holds the helpers they share and ``serving`` how the app is served.
"""

from explorer.ui.app import build_demo

__all__ = ["build_demo"]

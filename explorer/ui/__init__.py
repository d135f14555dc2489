"""Gradio user interface: the only package that imports gradio."""

from explorer.ui.app import build_demo

__all__ = ["build_demo"]

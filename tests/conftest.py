"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Real, de-identified chest X-ray samples kept beside the project (``../shared/data``).
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-samples"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The folder of real chest X-ray samples; skips the test when it is not present."""
    if not SAMPLES_DIR.is_dir():
        pytest.skip(f"real CXR samples not found at {SAMPLES_DIR} (expected ../shared/data/)")
    return SAMPLES_DIR

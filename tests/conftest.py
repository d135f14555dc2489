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


@pytest.fixture(scope="module")
def app_url():
    """The real app served on a free local port for one test module; yields its URL."""
    pytest.importorskip("gradio")
    from explorer.ops.load import free_port
    from explorer.ui import build_demo
    from explorer.ui.serving import ServeSettings, launch

    port = free_port()
    # Tests call the heavy endpoints in quick succession from one client: no per-client
    # shares here; they are exercised by their own tests (tests/test_load.py, test_serving.py).
    settings = ServeSettings(port=port, per_client=0)
    demo = build_demo(settings)
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A fake offline Hugging Face cache holding a tiny replica of every registered hub repo."""
    pytest.importorskip("open_clip")
    pytest.importorskip("sentencepiece")
    from explorer.models.replicas import write_hub_cache

    return write_hub_cache(tmp_path_factory.mktemp("hf-cache"))


@pytest.fixture(scope="module")
def hub_registry(hub_cache):
    """A registry of the hub models' replicas, loaded offline from :func:`hub_cache` (the
    offline settings last for the test module)."""
    from explorer.models import ModelRegistry
    from explorer.models.replicas import FAMILIES, offline_hub, replica_specs

    with offline_hub(hub_cache):
        yield ModelRegistry(replica_specs(), max_loaded=len(FAMILIES))


def default_model_ready() -> bool:
    """Whether the embedded default model loads here (its files are shipped in assets/)."""
    from explorer.models import default_registry

    reg = default_registry()
    return reg.status(reg.default, check_hub=False).available


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module (tiny models gain nothing from threads, and on a busy
    machine they lose a lot); the count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

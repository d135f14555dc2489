"""Attribution budgets: defaults where the model is fast, fewer steps where it is slow."""

from __future__ import annotations

import pytest

from explorer.attribution import budget as budget_module
from explorer.attribution.budget import MIN_STEPS, attribution_budget
from explorer.attribution.options import DEFAULT_INTERNAL_BATCH_SIZE, DEFAULT_STEPS
from explorer.models import ModelRegistry
from explorer.models.tiny import build_tiny_specs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return ModelRegistry(build_tiny_specs(tmp_path_factory.mktemp("tiny")))


def test_a_fast_model_keeps_every_default_and_is_measured_once(registry, monkeypatch):
    model = registry.load("tiny-clip", "cpu")
    first = attribution_budget(model)
    assert not first.reduced and first.ig_steps == DEFAULT_STEPS
    assert first.sentence("ig") == first.sentence("occlusion") == ""
    assert first.image_pass_s > 0 and first.text_pass_s > 0
    monkeypatch.setattr(budget_module, "_measure", lambda m: pytest.fail("measured twice"))
    assert attribution_budget(model) is first
    assert not any(p.grad is not None for p in model.module.parameters())  # nothing left behind


def test_a_slow_model_gets_fewer_steps_a_coarser_grid_and_says_so(registry, monkeypatch):
    model = registry.load("tiny-dual-encoder", "cpu")
    size = model.preprocess_cfg.image_size
    # 0.5 s an image pass, 0.2 s an image forward, 0.1 s a text pass, 1 GB held per image
    monkeypatch.setattr(budget_module, "_measure", lambda m: (0.5, 0.2, 0.1, 1024**3))
    monkeypatch.setattr(budget_module, "_available_bytes", lambda d: 8 * 1024**3)
    b = attribution_budget(model, map_seconds=10.0, words_seconds=4.0)
    assert b.ig_steps == MIN_STEPS  # 10 s / 0.5 s = 20 -> 16 (multiples of 8)
    assert b.ig_batch == 4 < DEFAULT_INTERNAL_BATCH_SIZE  # half of 8 GB at 1 GB an image
    assert b.token_steps == 40  # 4 s / 0.1 s
    window = max(1, size // 8)
    positions = (-(-(size - window) // b.occlusion_stride) + 1) ** 2
    assert b.occlusion_stride > max(1, size // 16) and (
        positions * 0.2 <= 10.0 or b.occlusion_stride == window
    )
    assert b.reduced
    assert b.image_options("ig") == {"steps": 16, "internal_batch_size": 4}
    assert b.text_options() == {"steps": 40} and b.text_options("text_attention") == {}
    assert "16 integration points (128 by default)" in b.sentence("ig")
    assert "moves" in b.sentence("occlusion") and b.sentence("attention") == ""

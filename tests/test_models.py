"""The adapter contract, asserted identically for every backend on tiny random checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from explorer.errors import ModelUnavailableError, UnknownModelError
from explorer.models import (
    ModelRegistry,
    ModelSpec,
    Preprocess,
    hub_reachable,
    load_specs,
    prepare_pixels,
)
from explorer.models.spec import default_model_name
from explorer.models.tiny import TINY_BUILDERS, TINY_IMAGE_SIZE, build_tiny_specs

TINY_NAMES = tuple(TINY_BUILDERS)
PROMPTS = ["there is pleural effusion", "there is no pleural effusion", "heart size is normal"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    specs = build_tiny_specs(tmp_path_factory.mktemp("tiny"))
    return ModelRegistry(specs, default="tiny-clip")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.random((48, 40), dtype=np.float32)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_encode_contract(registry, image, name):
    model = registry.load(name, "cpu")
    pixels = model.preprocess(image)
    assert pixels.shape == (1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    img = model.encode_image(pixels)
    tokens = model.tokenize(PROMPTS)
    txt = model.encode_text(tokens)
    assert img.ndim == 2 and txt.shape[0] == len(PROMPTS)
    assert img.shape[1] == txt.shape[1], "image and text embeddings must share one space"
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(1))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(len(PROMPTS)))
    # different texts give different embeddings; the same text gives the same one
    assert not torch.allclose(txt[0], txt[1])
    torch.testing.assert_close(
        model.encode_text(model.tokenize(PROMPTS[:1]))[0], txt[0], atol=1e-5, rtol=0
    )
    # unnormalised output keeps the direction
    raw = model.encode_image(pixels, normalize=False)
    torch.testing.assert_close(raw / raw.norm(dim=-1, keepdim=True), img, atol=1e-5, rtol=0)
    assert np.isfinite(model.logit_scale) and model.logit_scale > 0


@pytest.mark.parametrize("name", TINY_NAMES)
def test_token_strings_align_with_mask(registry, name):
    model = registry.load(name, "cpu")
    tokens = model.tokenize(PROMPTS)
    strings = model.token_strings(tokens)
    assert [len(s) for s in strings] == tokens["attention_mask"].sum(dim=1).tolist()
    assert any("no" in t for t in strings[1])
    assert isinstance(model.pad_token_id, int)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_gradients_reach_pixels_and_token_embeddings(registry, image, name):
    model = registry.load(name, "cpu")
    pixels = torch.tensor(image, requires_grad=True)
    captured = {}

    def keep(_module, _inp, out):
        out.retain_grad()
        captured["emb"] = out

    handle = model.token_embedding_layer.register_forward_hook(keep)
    try:
        sim = (
            model.encode_image(model.preprocess(pixels))
            * model.encode_text(model.tokenize(PROMPTS[:1]))
        ).sum()
        sim.backward()
    finally:
        handle.remove()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all()
    assert pixels.grad.abs().sum() > 0
    grad = captured["emb"].grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.module.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_spatial_layer_reads_as_grid(registry, image, name):
    model = registry.load(name, "cpu")
    layer = model.spatial_layer
    out = {}
    handle = layer.module.register_forward_hook(lambda _m, _i, o: out.setdefault("a", o))
    try:
        with torch.no_grad():
            model.encode_image(model.preprocess(np.stack([image, image])))
    finally:
        handle.remove()
    grid = layer.to_grid(out["a"])
    side = TINY_IMAGE_SIZE // 8
    assert grid.shape[0] == 2 and grid.shape[-2:] == (side, side)


def test_backends_agree_on_preprocessing(registry, image):
    """Preprocessing travels with the spec: every backend gets the same tensor for one spec."""
    tensors = [registry.load(n, "cpu").preprocess(image) for n in TINY_NAMES]
    for t in tensors[1:]:
        torch.testing.assert_close(t, tensors[0])


@pytest.mark.parametrize("mode", ["shortest", "squash", "pad"])
def test_prepare_pixels_normalisation(mode):
    pre = Preprocess(image_size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), resize_mode=mode)
    out = prepare_pixels(np.full((30, 20), 0.5, dtype=np.float32), pre)
    assert out.shape == (1, 3, 16, 16)
    centre = out[0, :, 8, 8]
    torch.testing.assert_close(centre, torch.tensor([0.0, 0.4, 0.4]), atol=1e-4, rtol=0)
    if mode == "pad":  # letterbox columns are black (0 before normalisation)
        torch.testing.assert_close(out[0, 0, 8, 0], torch.tensor(-2.5))


def test_prepare_pixels_rejects_colour_arrays():
    with pytest.raises(ValueError, match="grayscale"):
        prepare_pixels(np.zeros((2, 3, 8, 8), dtype=np.float32), Preprocess(image_size=8))


def test_registry_caches_and_reports_errors(registry, tmp_path):
    assert registry.load("tiny-clip", "cpu") is registry.load("tiny-clip", "cpu")
    with pytest.raises(UnknownModelError, match="no model called 'nope'"):
        registry.load("nope")
    missing = ModelSpec(name="gone", backend="transformers", source=str(tmp_path / "missing"))
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))
    broken = ModelSpec(name="broken", backend="transformers", source=str(broken_dir))
    odd = ModelSpec(name="odd", backend="no-such-backend", source=str(tmp_path))
    reg = ModelRegistry(
        [missing, broken, odd, *build_tiny_specs(tmp_path / "t")[:1]], default="tiny-open-clip"
    )
    for name, phrase in [
        ("gone", "files are missing"),
        ("broken", "not a supported dual encoder"),
        ("odd", "backend"),
    ]:
        with pytest.raises(ModelUnavailableError) as info:
            reg.load(name, "cpu")
        assert f"'{name}'" in str(info.value) and phrase in str(info.value)
        assert not reg.status(name).available
    model, notice = reg.load_or_default("gone", "cpu")
    assert model.name == "tiny-open-clip"
    assert "gone" in notice and "tiny-open-clip" in notice
    assert reg.load_or_default("tiny-open-clip", "cpu")[1] is None


def test_shipped_config_is_valid():
    specs = load_specs()
    names = [s.name for s in specs]
    assert default_model_name() in names
    for spec in specs:
        assert spec.preprocess is not None, f"{spec.name} must carry its preprocessing"
        assert spec.card, f"{spec.name} needs a model card"
    assert {"open_clip", "transformers"} <= {s.backend for s in specs}


def test_offline_env_makes_hub_models_unavailable(monkeypatch):
    from explorer.models.registry import ModelRegistry as Reg

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    try:
        reg = Reg(load_specs())
        status = reg.status("biomedclip")
        if "cache" not in status.reason or not status.available:
            assert not status.available and "hub" in status.reason
            with pytest.raises(ModelUnavailableError, match="biomedclip"):
                reg.load("biomedclip", "cpu")
    finally:
        hub_reachable.cache_clear()


@pytest.mark.hub
@pytest.mark.skipif(not hub_reachable(), reason="Hugging Face hub not reachable (offline)")
def test_biomedclip_from_hub_separates_texts():
    reg = ModelRegistry(load_specs())
    model = reg.load("biomedclip", "cpu")
    txt = model.embed_texts(["there is pleural effusion", "there is no pleural effusion"])
    assert txt.shape == (2, 512)
    assert model.spatial_layer.kind == "vit"

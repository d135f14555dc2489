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
from explorer.models.preprocess import (
    HF_PROCESSOR_FILE,
    from_checkpoint,
    normalize,
    placement,
    to_image_space,
    to_model_grid,
)
from explorer.models.spec import default_model_name, local_path
from explorer.models.tiny import TINY_BUILDERS, TINY_IMAGE_SIZE, TINY_PREPROCESS, build_tiny_specs
from explorer.paths import assets_dir, configs_dir
from explorer.training.cells import is_cell_pool_config

TINY_NAMES = tuple(TINY_BUILDERS)
ASSETS = assets_dir()
#: The phantom models' training configs (the source of truth of their preprocessing).
TRAIN_CONFIGS = sorted(
    p for p in (configs_dir() / "train").glob("*.json") if not is_cell_pool_config(p)
)
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


@pytest.fixture(scope="module")
def radiograph():
    """A real chest X-ray (512 x 512 shipped example), cropped to a non-square shape."""
    from explorer.imaging import load_radiograph

    pixels = load_radiograph(ASSETS / "examples" / "00000001_000.png").pixels
    return np.ascontiguousarray(pixels[40:472, 100:420])


@pytest.mark.parametrize("name", TINY_NAMES)
def test_every_backend_preprocesses_with_the_one_transform(registry, radiograph, name):
    """Each backend's ``preprocess`` is exactly :func:`prepare_pixels` with the spec's config
    (no backend resizes or normalises its own way), on a real radiograph."""
    model = registry.load(name, "cpu")
    assert model.preprocess_cfg == registry.spec(name).preprocess == TINY_PREPROCESS
    ours = model.preprocess(radiograph)
    reference = prepare_pixels(radiograph, TINY_PREPROCESS)
    assert ours.shape == (1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    torch.testing.assert_close(ours, reference, atol=0, rtol=0)
    # and the one transform is the geometry then the normalisation
    grid = to_model_grid(radiograph, TINY_PREPROCESS)
    torch.testing.assert_close(normalize(grid, TINY_PREPROCESS), reference, atol=0, rtol=0)
    assert float(reference.std()) > 0.1  # a real image, not a constant one


def test_preprocessing_of_the_real_default_model(radiograph):
    """The shipped default reads its preprocessing from its checkpoint and applies it."""
    from conftest import default_model_ready

    if not default_model_ready():
        pytest.skip("embedded default model not built")
    from explorer.models import load_model

    model = load_model(None, "cpu")
    pre = model.preprocess_cfg
    assert pre == Preprocess(224, (0.5,) * 3, (0.25,) * 3, "squash")
    torch.testing.assert_close(
        model.preprocess(radiograph), prepare_pixels(radiograph, pre), atol=0, rtol=0
    )


@pytest.mark.parametrize("config", TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_phantom_preprocessing_has_one_source(config):
    """Training's config states the phantom models' preprocessing; the shipped
    ``preprocessor_config.json``, the registry's spec and the shipped training record agree."""
    from explorer.training.model import EncoderConfig
    from explorer.training.trainer import TrainConfig, _tuples

    cfg = TrainConfig.from_file(config)
    truth = cfg.model.preprocess
    folder = local_path(cfg.out_dir)
    shipped = json.loads((folder / HF_PROCESSOR_FILE).read_text(encoding="utf-8"))
    side = truth.image_size
    assert shipped["size"] == {"height": side, "width": side}  # resize both sides: "squash"
    assert shipped["image_mean"] == list(truth.mean)
    assert shipped["image_std"] == list(truth.std)
    assert Preprocess.from_image_processor(shipped) == truth
    spec = {s.name: s for s in load_specs()}[cfg.name]
    assert spec.preprocess == truth
    record = json.loads((folder / "training_config.json").read_text(encoding="utf-8"))
    assert EncoderConfig(**_tuples(record["config"]["model"])).preprocess == truth


def test_export_writes_the_preprocessing_it_reads_back(tmp_path):
    """What :func:`export` writes (a ViT image processor) reads back as the same config."""
    from transformers import ViTImageProcessor

    pre = Preprocess(96, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5), "squash")
    ViTImageProcessor(do_resize=True, **pre.image_processor_settings()).save_pretrained(tmp_path)
    assert from_checkpoint(tmp_path) == pre
    with pytest.raises(ValueError, match="squash"):
        Preprocess(96, resize_mode="shortest").image_processor_settings()


def test_spec_preprocess_from_checkpoint(tmp_path):
    """``"preprocess": "checkpoint"`` reads the folder's own files; a hub id cannot."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"preprocess_cfg": {"size": 48, "mean": [0.1] * 3, "std": [0.3] * 3}})
    )
    spec = ModelSpec.from_dict(
        {"name": "m", "backend": "open_clip", "source": str(folder), "preprocess": "checkpoint"}
    )
    assert spec.preprocess == Preprocess(48, (0.1,) * 3, (0.3,) * 3, "shortest")
    with pytest.raises(ValueError, match="local source"):
        ModelSpec.from_dict(
            {
                "name": "h",
                "backend": "open_clip",
                "source": "hf-hub:a/b",
                "preprocess": "checkpoint",
            }
        )


@pytest.mark.parametrize("mode", ["shortest", "squash", "pad"])
def test_inverse_undoes_the_geometry(mode):
    """A map that is the model input itself, sent back, is the image where the model saw it."""
    pre = Preprocess(image_size=32, resize_mode=mode)
    rows, cols = np.linspace(0.0, 0.6, 60), np.linspace(0.0, 0.4, 90)
    img = np.add.outer(rows, cols).astype(np.float32)  # a smooth 60 x 90 ramp
    back = to_image_space(to_model_grid(img, pre)[0, 0], pre, img.shape)
    where = placement(img.shape, pre)
    assert back.shape == img.shape and where.mode == mode and not where.identity
    if mode == "shortest":  # only the centre was seen; the cut-away sides come back as zeros
        assert where.resized == (32, 48) and (where.top, where.left) == (0, 8)
        assert np.abs(back[:, :12]).max() == 0 and np.abs(back[:, -12:]).max() == 0
        seen = back[:, 18:72]
        np.testing.assert_allclose(seen, img[:, 18:72], atol=0.02)
    else:
        if mode == "pad":
            assert where.resized == (21, 32) and (where.top, where.left) == (5, 0)
        np.testing.assert_allclose(back[8:-8, 8:-8], img[8:-8, 8:-8], atol=0.02)
    # an image already at the model's size is not resampled, either way
    square = img[:32, :32].copy()
    assert placement(square.shape, pre).identity
    np.testing.assert_array_equal(to_model_grid(square, pre)[0, 0].numpy(), square)
    np.testing.assert_array_equal(to_image_space(square, pre, square.shape), square)


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


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            OSError(
                "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't "
                "find them in the cached files.\nCheck your internet connection or see how to run "
                "the library in offline mode at 'https://huggingface.co/docs/transformers/"
                "installation#offline-mode'."
            ),
            "The model 'm' cannot be loaded here: its weights would have to be downloaded and "
            "the Hugging Face hub cannot be reached.",
        ),
        (
            ImportError(
                "SiglipTokenizer requires the SentencePiece library but it was not found in your "
                "environment. Check out the instructions on the installation page of its repo: "
                "https://github.com/google/sentencepiece#installation and follow the ones that "
                "match your environment. Please note that you may need to restart your runtime "
                "after installation."
            ),
            "The model 'm' cannot be loaded here: SiglipTokenizer requires the SentencePiece "
            "library but it was not found in your environment. Check out the instructions on "
            "the installation page of its repo: https://github.com/google/sentencepiece#installation "
            "and follow the ones that match your environment.",
        ),
        (
            FileNotFoundError("config.json"),
            "The model 'm' cannot be loaded here: its files could not be read (config.json).",
        ),
    ],
)
def test_why_a_model_cannot_load_is_whole_sentences(exc, expected):
    from explorer.errors import ModelUnavailableError
    from explorer.models.registry import _explain

    assert str(ModelUnavailableError("m", _explain(exc))) == expected


# --- specs without preprocessing, and text length ----------------------------------------------


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("clip", Preprocess(224, CLIP_MEAN, (0.26862954, 0.26130258, 0.27577711), "shortest")),
        ("siglip", Preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash")),
    ],
)
def test_a_spec_without_preprocess_reads_the_image_processor(tmp_path, family, expected):
    """transformers 5 holds an image processor's size in a SizeDict, not a dict."""
    from explorer.models.replicas import build_clip_replica, build_siglip_replica

    if family == "siglip":
        pytest.importorskip("sentencepiece")
    build = build_clip_replica if family == "clip" else build_siglip_replica
    folder = build(tmp_path / family, size="tiny")
    spec = ModelSpec(name=family, backend="transformers", source=str(folder))
    assert spec.preprocess is None
    model = ModelRegistry([spec]).load(family, "cpu")
    got = model.preprocess_cfg
    assert (got.image_size, got.resize_mode) == (expected.image_size, expected.resize_mode)
    np.testing.assert_allclose(got.mean, expected.mean, atol=1e-6)
    np.testing.assert_allclose(got.std, expected.std, atol=1e-6)
    assert model.embed_image(np.zeros((64, 64), np.float32)).shape[0] == 1


LONG_TEXT = " ".join(["there is a small left pleural effusion and mild cardiomegaly ."] * 30)


def test_a_clip_tokenizer_without_model_max_length_is_cut_at_the_positions(tmp_path):
    """Without ``model_max_length`` the tokenizer would let ~318 tokens reach 77 positions."""
    from explorer.models.replicas import build_clip_replica

    folder = build_clip_replica(tmp_path / "clip", size="tiny", max_length=None)
    assert "model_max_length" not in json.loads((folder / "tokenizer_config.json").read_text())
    spec = ModelSpec(name="clip", backend="transformers", source=str(folder), preprocess=None)
    model = ModelRegistry([spec]).load("clip", "cpu")
    assert model.max_text_tokens == 77
    texts = [LONG_TEXT, PROMPTS[0]]
    counts = model.count_tokens(texts)
    assert counts[0] > 300 and counts[1] < 77
    assert model.truncated(texts) == [True, False]
    tokens = model.tokenize(texts)
    assert tokens["input_ids"].shape[1] == 77
    emb = model.embed_texts(texts)
    assert torch.isfinite(emb).all() and emb.shape[0] == 2


@pytest.mark.parametrize("name", TINY_NAMES)
def test_every_backend_cuts_long_texts_and_says_so(registry, name):
    model = registry.load(name, "cpu")
    limit = model.max_text_tokens
    assert isinstance(limit, int) and limit > 2
    texts = [LONG_TEXT, PROMPTS[0]]
    assert model.truncated(texts) == [True, False]
    tokens = model.tokenize(texts)
    assert int(tokens["attention_mask"].sum(dim=1).max()) <= limit
    assert tokens["input_ids"].shape[1] <= limit
    assert torch.isfinite(model.embed_texts(texts)).all()
    assert model.count_tokens(PROMPTS) == tokens_per_text(model, PROMPTS)


def tokens_per_text(model, texts):
    return model.tokenize(texts)["attention_mask"].sum(dim=1).tolist()
